"""Warm-up decides readiness: TF Serving's tf_serving_warmup_requests and the cloud warm_up_data_path."""

import asyncio
import json

import numpy as np
import pytest

from serving._proto.eas import tf_predict_pb2
from serving._proto.tensorflow.core.example import example_pb2
from serving._proto.tensorflow_serving.apis import prediction_log_pb2
from serving.codecs.tfrecord import read_tfrecords, write_tfrecords
from serving.core.dataplane import DataPlane
from serving.core.model_config import ModelSpec
from serving.core.repository import ModelManager, State
from serving.core.servable import Runtime
from serving.tools.warmup import TF_WARMUP_FILE, Warmup
from tests.helpers import make_linear
from tests.tf_models import half_plus_two


def predict_log(values, name="inputs", signature=""):
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "m"
    request.model_spec.signature_name = signature
    tensor = request.inputs[name]
    tensor.dtype = 1  # DT_FLOAT
    array = np.asarray(values, np.float32)
    for d in array.shape:
        tensor.tensor_shape.dim.add().size = d
    tensor.float_val.extend(array.ravel().tolist())
    return log.SerializeToString()


def examples_log(kind, xs, signature="", tasks=()):
    """A classify_log / regress_log / multi_inference_log record over tf.Examples {"x": [x]};
    `tasks`: (signature, method) pairs of a multi-inference request."""
    log = prediction_log_pb2.PredictionLog()
    request = getattr(log, kind).request
    if kind == "multi_inference_log":
        for sig, method in tasks:
            task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
            task.model_spec.name, task.model_spec.signature_name = "m", sig
    else:
        request.model_spec.name, request.model_spec.signature_name = "m", signature
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        request.input.example_list.examples.append(example)
    return log.SerializeToString()


def write_warmup(version_dir, records):
    path = version_dir / TF_WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tfrecords(path, records)
    return path


def manager_with_warmup(rate_limit=0.0, **warmup_kw):
    runtime = Runtime()
    dataplane = DataPlane(runtime, rate_limit)
    return ModelManager(runtime=runtime, warmup=Warmup(dataplane, **warmup_kw)), dataplane


async def serve(base, iterations=1, platform="linear", **warmup_kw):
    manager, dataplane = manager_with_warmup(iterations=iterations, **warmup_kw)
    await manager.apply([ModelSpec("m", str(base), platform)])
    return manager, dataplane


def warmup_requests(servable):
    return sum(q.stats.requests for q in servable.queues.values())


def test_tfrecord_framing_round_trips_and_detects_corruption(tmp_path):
    path = tmp_path / "r"
    write_tfrecords(path, [b"one", b"", b"three" * 100])
    assert list(read_tfrecords(path)) == [b"one", b"", b"three" * 100]
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF  # a byte of the first record's data
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="record 0 is corrupt"):
        list(read_tfrecords(path))
    path.write_bytes(bytes(data[:5]))
    with pytest.raises(Exception, match="truncated"):
        list(read_tfrecords(path))


def test_good_warmup_file_is_replayed_before_the_version_is_available(tmp_path):
    d = make_linear(tmp_path, 1)
    write_warmup(d, [predict_log([[1.0], [2.0]]), predict_log([[3.0]])])

    async def go():
        manager, _ = await serve(tmp_path, iterations=3)
        assert manager.status("m")[0].state is State.AVAILABLE
        s = manager.get("m")
        assert warmup_requests(s) == 6  # 2 records x 3 iterations, through the batching path
        await manager.shutdown()

    asyncio.run(go())


def test_version_is_not_available_while_warming_up(tmp_path):
    d = make_linear(tmp_path, 1, delay_ms=300)
    write_warmup(d, [predict_log([[1.0]])])

    async def go():
        manager, _ = manager_with_warmup()
        task = asyncio.create_task(manager.apply([ModelSpec("m", str(tmp_path), "linear")]))
        await asyncio.sleep(0.15)
        assert manager.status("m")[0].state is State.LOADING and not manager.ready()
        await task
        assert manager.ready()
        await manager.shutdown()

    asyncio.run(go())


@pytest.mark.parametrize(
    "records, message",
    [
        ([b"\x08\x96\x01garbage-not-a-log"], "is not a PredictionLog"),
        ([predict_log([[1.0, 2.0]])], r"record 0 \(predict_log\) failed: .*expects shape \[-1,1\], got \[1,2\]"),
        ([predict_log([[1.0]]), predict_log([[1.0]], name="nope")],
         r"record 1 \(predict_log\) failed: .*missing input"),
        ([predict_log([[1.0]])] * 1001, "more than 1000 warm-up records"),
        ([prediction_log_pb2.PredictionLog(classify_log={}).SerializeToString()],
         r"record 0 \(classify_log\): Input is empty$"),
        ([examples_log("regress_log", [1.0])],
         r"record 0 \(regress_log\) failed: model m \(linear\) does not implement Regress$"),
        ([prediction_log_pb2.PredictionLog(predict_streamed_log={}).SerializeToString()],
         "record 0 is a predict_streamed_log log; warm-up replays predict_log, classify_log, regress_log and "
         "multi_inference_log records$"),
        ([b"\x2a\x00"], r"record 0 is an empty \(or session_run_log\) log; "),  # field 5: session_run_log
    ],
)
def test_bad_warmup_fails_the_load_and_keeps_the_old_version(tmp_path, records, message):
    make_linear(tmp_path, 1, bias=1.0)
    make_linear(tmp_path, 2, bias=2.0)

    async def go():
        manager, _ = await serve(tmp_path)
        assert manager.get("m").version == 2
        write_warmup(make_linear(tmp_path, 3), records)
        await manager.poll()
        (v3,) = manager.status("m", 3)
        assert v3.state is State.END and v3.error is not None
        assert v3.error.message.startswith("warm-up: ")
        import re

        assert re.search(message, v3.error.message), v3.error.message
        assert manager.get("m").version == 2  # still serving
        await manager.shutdown()

    asyncio.run(go())


def test_corrupt_warmup_file_fails_the_load(tmp_path):
    d = make_linear(tmp_path, 1)
    path = write_warmup(d, [predict_log([[1.0]])])
    path.write_bytes(path.read_bytes()[:-2])

    async def go():
        manager, _ = await serve(tmp_path)
        (v1,) = manager.status("m")
        assert v1.state is State.END and "truncated" in v1.error.message
        await manager.shutdown()

    asyncio.run(go())


def test_cloud_warm_up_data_path_bin_and_txt_are_sent_five_times(tmp_path):
    make_linear(tmp_path / "m", 1)
    request = tf_predict_pb2.PredictRequest()
    array = request.inputs["inputs"]
    array.dtype = tf_predict_pb2.DT_FLOAT
    array.array_shape.dim.extend([2, 1])
    array.float_val.extend([1.0, 2.0])
    (tmp_path / "warm.bin").write_bytes(request.SerializeToString())
    (tmp_path / "warm.txt").write_text(json.dumps([[1.0]]) + "\n\n" + json.dumps({"instances": [[2.0]]}) + "\n")

    async def go(path):
        manager, _ = await serve(tmp_path / "m", service_model="m", warm_up_data_path=str(path))
        count = warmup_requests(manager.get("m"))
        await manager.shutdown()
        return count

    assert asyncio.run(go(tmp_path / "warm.bin")) == 5
    assert asyncio.run(go(tmp_path / "warm.txt")) == 10
    (tmp_path / "bad.txt").write_text("[[1.0, 2.0]]\n")

    async def bad():
        manager, _ = await serve(tmp_path / "m", service_model="m", warm_up_data_path=str(tmp_path / "bad.txt"))
        (v1,) = manager.status("m")
        await manager.shutdown()
        return v1.error.message

    assert "warm-up: request 0 failed" in asyncio.run(bad())


def test_warmup_is_not_counted_against_the_rate_limit(tmp_path):
    d = make_linear(tmp_path, 1)
    write_warmup(d, [predict_log([[1.0]])])

    async def go():
        manager, _ = manager_with_warmup(rate_limit=1, iterations=20)
        await manager.apply([ModelSpec("m", str(tmp_path), "linear")])
        assert manager.status("m")[0].state is State.AVAILABLE
        assert warmup_requests(manager.get("m")) == 20
        await manager.shutdown()

    asyncio.run(go())


def examples_seen(servable):
    """How many tf.Examples the half_plus_two(count_examples=True) model's classify/regress have run on."""
    x = np.zeros(1, np.float32)
    return float(servable.processor.predict({"x": x}, "calls")["calls"][0])


@pytest.mark.parametrize(
    "record, examples",
    [
        (examples_log("classify_log", [1.0, 2.0], "classify_x_to_y"), 2),
        (examples_log("regress_log", [1.0], "regress_x_to_y"), 1),
        # one Input, two signatures: each sees the example
        (examples_log("multi_inference_log", [1.0], tasks=[("classify_x_to_y", "classify"),
                                                           ("regress_x_to_y", "regress")]), 2),
    ],
    ids=["classify", "regress", "multi_inference"],
)
def test_classify_regress_and_multi_inference_records_run_on_the_model_before_it_is_available(
        tmp_path, record, examples):
    pytest.importorskip("tensorflow", reason="tensorflow-cpu (extra tensorflow) is not installed")
    write_warmup(half_plus_two(tmp_path / "1", count_examples=True), [record, predict_log([2.0], name="x")])

    async def go():
        manager, _ = await serve(tmp_path, iterations=3, platform="tensorflow")
        assert manager.status("m")[0].state is State.AVAILABLE
        s = manager.get("m")
        assert examples_seen(s) == 3 * examples  # each record replayed 3 times, through the model
        await manager.shutdown()

    asyncio.run(go())


@pytest.mark.parametrize(
    "record, message",
    [
        (examples_log("classify_log", [1.0], "regress_x_to_y"),
         r"record 1 \(classify_log\) failed: Expected classification signature method_name to be "
         r"tensorflow/serving/classify\. Was: tensorflow/serving/regress$"),
        (examples_log("classify_log", [1.0], "nope"), r"record 1 \(classify_log\) failed: .*\bnope\b"),
        (examples_log("multi_inference_log", [1.0], tasks=[("regress_x_to_y", "regress")] * 2),
         r"record 1 \(multi_inference_log\) failed: Duplicate evaluation of signature: regress_x_to_y$"),
        (examples_log("multi_inference_log", [1.0]),
         r"record 1 \(multi_inference_log\) failed: MultiInferenceRequest has no tasks$"),
    ],
    ids=["classify-on-a-regress-signature", "classify-on-no-signature", "duplicate-task", "no-tasks"],
)
def test_a_failing_examples_record_fails_the_load_naming_the_record_and_its_kind(tmp_path, record, message):
    pytest.importorskip("tensorflow", reason="tensorflow-cpu (extra tensorflow) is not installed")
    write_warmup(half_plus_two(tmp_path / "1"), [examples_log("regress_log", [1.0], "regress_x_to_y"), record])

    async def go():
        manager, _ = await serve(tmp_path, platform="tensorflow")
        (v1,) = manager.status("m")
        await manager.shutdown()
        return v1

    v1 = asyncio.run(go())
    assert v1.state is State.END and v1.error.message.startswith("warm-up: ")
    import re

    assert re.search(message, v1.error.message), v1.error.message
