"""The model manager: policies, labels, polling, failed loads, availability-preserving swaps."""

import asyncio
import shutil
import threading

import numpy as np
import pytest

from serving.core.model_config import ConfigError, ModelSpec, VersionPolicy
from serving.core.repository import ModelManager, State
from serving.errors import Code, ServingError
from tests.helpers import make_linear


def spec(base, name="m", policy=None, labels=None, platform="linear"):
    return ModelSpec(name=name, base_path=str(base), platform=platform, policy=policy or VersionPolicy(),
                     labels=labels or {})


def run(coro):
    return asyncio.run(coro)


def predict(servable, x):
    return servable.run("predict", {"inputs": np.asarray(x, np.float32)}, "serving_default")["predictions"]


def test_latest_policy_serves_the_highest_version(tmp_path):
    make_linear(tmp_path, 1, bias=1.0)
    make_linear(tmp_path, 2, bias=2.0)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path)])
        s = m.get("m")
        assert s.version == 2 and m.status("m", 2)[0].state is State.AVAILABLE
        assert predict(s, [[2.0]]).tolist() == [3.0]  # 0.5 * 2 + 2
        with pytest.raises(ServingError) as e:
            m.get("m", 1)
        assert e.value.code is Code.NOT_FOUND and "Specific(m, 1)" in e.value.message
        await m.shutdown()

    run(go())


def test_all_and_specific_policies_and_labels(tmp_path):
    for v in (1, 2, 3):
        make_linear(tmp_path, v, bias=float(v))

    async def go():
        m = ModelManager()
        await m.apply([
            spec(tmp_path, "all", VersionPolicy("all")),
            spec(tmp_path, "some", VersionPolicy("specific", versions=frozenset({1, 3})),
                 labels={"stable": 1, "canary": 3}),
        ])
        assert sorted(s.version for s in m.status("all")) == [1, 2, 3]
        assert [s.version for s in m.status("some")] == [3, 1]
        assert m.get("some", label="stable").version == 1
        assert m.get("some", label="canary").version == 3
        with pytest.raises(ServingError) as e:
            m.get("some", label="nope")
        assert e.value.code is Code.INVALID_ARGUMENT
        assert e.value.message == "Unrecognized servable version label: nope"
        with pytest.raises(ServingError) as e:
            m.status("missing")
        assert e.value.code is Code.NOT_FOUND
        assert e.value.message == "Could not find any versions of model missing (known models: all, some)"
        with pytest.raises(ServingError) as e:
            m.status("some", 2)
        assert e.value.message == "Could not find version 2 of model some (versions of some: 1, 3)"
        await m.shutdown()

    run(go())


def test_label_on_unavailable_version_is_refused_unless_allowed_for_new_labels(tmp_path):
    make_linear(tmp_path, 1)

    async def go(allow):
        m = ModelManager(allow_version_labels_for_unavailable_models=allow)
        if allow:
            await m.apply([spec(tmp_path, labels={"next": 2})])
            assert m.models["m"].labels == {"next": 2}
            with pytest.raises(ServingError) as e:
                m.get("m", label="next")
            assert e.value.code is Code.NOT_FOUND
        else:
            with pytest.raises(ConfigError, match="version 2 of model m, which is not currently available"):
                await m.apply([spec(tmp_path, labels={"next": 2})])
            assert m.models["m"].labels == {}
            assert m.get("m").version == 1  # the model itself still serves
        await m.shutdown()

    run(go(False))
    run(go(True))


def test_existing_label_cannot_move_to_unavailable_version_even_when_allowed(tmp_path):
    make_linear(tmp_path, 1)

    async def go():
        m = ModelManager(allow_version_labels_for_unavailable_models=True)
        await m.apply([spec(tmp_path, labels={"stable": 1})])
        with pytest.raises(ConfigError):
            await m.apply([spec(tmp_path, labels={"stable": 5})])
        assert m.models["m"].labels == {"stable": 1}
        await m.shutdown()

    run(go())


def test_poll_loads_new_version_then_unloads_old_one(tmp_path):
    make_linear(tmp_path, 1, bias=1.0)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path)])
        old = m.status("m", 1)[0]
        make_linear(tmp_path, 2, bias=2.0)
        await m.poll()
        assert m.get("m").version == 2
        assert old.state is State.END and old.servable is None
        states = {s.version: s.state for s in m.status("m")}
        assert states == {2: State.AVAILABLE, 1: State.END}
        shutil.rmtree(tmp_path / "2")
        shutil.rmtree(tmp_path / "1")
        await m.poll()
        assert m.models["m"].latest is None and not m.ready()
        await m.shutdown()

    run(go())


def test_failed_load_keeps_the_old_version_serving_and_reports_the_error(tmp_path):
    make_linear(tmp_path, 1, bias=1.0)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path)])
        (tmp_path / "2").mkdir()
        (tmp_path / "2" / "linear.json").write_text("{not json")
        await m.poll()
        assert m.get("m").version == 1
        broken = m.status("m", 2)[0]
        assert broken.state is State.END and broken.error is not None
        assert broken.error.code is Code.FAILED_PRECONDITION and "cannot load linear model" in broken.error.message
        with pytest.raises(ServingError) as e:
            m.get("m", 2)
        assert e.value.code is Code.NOT_FOUND
        await m.poll()  # a failed version is not retried on every poll, and v1 stays
        assert m.get("m").version == 1 and m.status("m", 2)[0].error is not None
        # Fixing it under a new version number swaps as usual.
        make_linear(tmp_path, 3, bias=3.0)
        await m.poll()
        assert m.get("m").version == 3
        await m.shutdown()

    run(go())


def test_unknown_platform_and_missing_files_fail_the_load_with_a_message(tmp_path):
    make_linear(tmp_path / "a", 1)
    (tmp_path / "b" / "1").mkdir(parents=True)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path / "a", "a", platform="nosuch"), spec(tmp_path / "b", "b", platform=None)])
        (a,) = m.status("a")
        assert "unknown processor 'nosuch'" in a.error.message
        (b,) = m.status("b")
        assert "cannot tell which processor" in b.error.message
        with pytest.raises(ServingError) as e:
            m.get("a")
        assert e.value.code is Code.UNAVAILABLE
        assert not m.ready()
        await m.shutdown()

    run(go())


def test_models_are_added_and_removed_by_apply(tmp_path):
    make_linear(tmp_path / "a", 1)
    make_linear(tmp_path / "b", 1)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path / "a", "a")])
        assert m.ready()
        a = m.status("a")[0]
        await m.apply([spec(tmp_path / "b", "b")])
        assert set(m.models) == {"b"} and a.state is State.END
        with pytest.raises(ServingError) as e:
            m.get("a")
        assert e.value.code is Code.NOT_FOUND
        await m.shutdown()

    run(go())


def test_unload_waits_for_requests_in_flight(tmp_path):
    make_linear(tmp_path, 1)

    async def go():
        m = ModelManager()
        await m.apply([spec(tmp_path)])
        s = m.status("m", 1)[0]
        call = asyncio.get_running_loop().create_future()
        m.get("m").hold(call)  # a request in flight on version 1
        make_linear(tmp_path, 2)
        poll = asyncio.create_task(m.poll())
        await asyncio.sleep(0.2)
        assert s.state is State.UNLOADING and s.servable is not None  # still loaded for its request
        assert m.get("m").version == 2
        call.set_result({})
        await poll
        assert s.state is State.END and s.servable is None
        await m.shutdown()

    run(go())


def test_loads_happen_off_the_event_loop(tmp_path):
    make_linear(tmp_path, 1)
    seen = []

    async def go():
        from processors.linear import LinearProcessor

        original = LinearProcessor.load

        def load(self, *a, **kw):
            seen.append(threading.current_thread() is threading.main_thread())
            return original(self, *a, **kw)

        LinearProcessor.load = load
        try:
            m = ModelManager()
            await m.apply([spec(tmp_path)])
            await m.shutdown()
        finally:
            LinearProcessor.load = original

    run(go())
    assert seen == [False]


def test_a_label_moves_before_the_version_it_left_is_unloaded(tmp_path):
    for v in (1, 2):
        make_linear(tmp_path, v, bias=float(v))

    async def go():
        m = ModelManager()
        both = VersionPolicy("specific", versions=frozenset({1, 2}))
        await m.apply([spec(tmp_path, policy=both, labels={"stable": 2})])
        call = asyncio.get_running_loop().create_future()
        m.get("m", 2).hold(call)  # version 2 is busy: its unload waits
        only_one = VersionPolicy("specific", versions=frozenset({1}))
        change = asyncio.create_task(m.apply([spec(tmp_path, policy=only_one, labels={"stable": 1})]))
        await asyncio.sleep(0.2)
        assert m.status("m", 2)[0].state is State.UNLOADING
        assert m.get("m", label="stable").version == 1  # not 503 "Specific(m, 2): it is UNLOADING"
        call.set_result({})
        await change
        await m.shutdown()

    run(go())


def test_a_processor_is_loaded_only_on_a_device_it_declares(tmp_path):
    make_linear(tmp_path, 1)

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec(name="m", base_path=str(tmp_path), platform="linear", device="cuda")])
        status = m.status("m")[0]
        assert status.state is State.END and status.error is not None
        assert status.error.code is Code.FAILED_PRECONDITION
        assert status.error.message == "processor linear runs on cpu, not cuda"
        await m.shutdown()

    run(go())
