"""The Prometheus scrape of a real server, parsed with prometheus-client's own parser: request counters,
histograms that grow with traffic, batch histograms, model load times and failures, process metrics."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Server, make_linear, pbtxt


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    make_linear(root / "lin", 1)  # y = 0.5x + 2
    (make_linear(root / "broken", 1) / "linear.json").write_text("{not json")
    config = root / "c.pbtxt"
    config.write_text(pbtxt({"name": "lin", "base_path": root / "lin", "platform": "linear"},
                            {"name": "broken", "base_path": root / "broken", "platform": "linear"}))
    with Server(f"--model_config_file={config}", wait_ready=False) as s:
        s.wait_for("/v1/models/lin/metadata")  # 200 once a version is AVAILABLE; the status answers 200 as it loads
        yield s


def scrape(server):
    status, text = server.get("/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def samples(family, suffix="", **labels):
    """The samples of a family (name + suffix) whose labels include `labels`."""
    return [s for s in family.samples if s.name == family.name + suffix
            and all(s.labels.get(k) == v for k, v in labels.items())]


def histogram(families, name, **labels):
    """(buckets {le: count}, count, sum) of one labelled histogram series."""
    family = families[name]
    assert family.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in samples(family, "_bucket", **labels)}
    (count,) = [s.value for s in samples(family, "_count", **labels)]
    (total,) = [s.value for s in samples(family, "_sum", **labels)]
    return buckets, count, total


LIN = {"model": "lin", "version": "1", "signature": "serving_default"}


def test_request_histograms_grow_with_traffic_and_are_well_formed(server):
    before = scrape(server)
    start = (histogram(before, "serving_request_duration_seconds", protocol="tfserving_rest", **LIN)[1]
             if samples(before["serving_request_duration_seconds"], "_count", **LIN) else 0.0)
    for rows in (1, 2, 3):
        body = {"instances": [[float(i)] for i in range(rows)]}
        assert server.post("/v1/models/lin:predict", body)[0] == 200
    after = scrape(server)
    buckets, count, total = histogram(after, "serving_request_duration_seconds", protocol="tfserving_rest",
                                      method="predict", **LIN)
    assert count == start + 3 and total > 0
    values = [buckets[le] for le in sorted(buckets, key=lambda le: float(le))]
    assert values == sorted(values) and buckets["+Inf"] == count  # cumulative, ending at the count
    assert min(float(le) for le in buckets) == 5e-05  # buckets for a sub-millisecond engine
    _, rows_count, rows_sum = histogram(after, "serving_request_rows", protocol="tfserving_rest", **LIN)
    assert rows_count >= 3 and rows_sum >= 6
    _, queued, _ = histogram(after, "serving_request_queue_seconds", protocol="tfserving_rest", **LIN)
    assert queued >= 3
    (ok,) = samples(after["serving_requests"], "_total", code="OK", protocol="tfserving_rest", **LIN)
    assert ok.value >= 3


def test_every_batch_is_in_the_batch_histograms(server):
    assert server.post("/v1/models/lin:predict", {"instances": [[1.0], [2.0]]})[0] == 200
    families = scrape(server)
    (batches,) = samples(families["serving_batch_batches"], "_total", **LIN)
    (rows,) = samples(families["serving_batch_rows"], "_total", **LIN)
    _, compute_count, compute_sum = histogram(families, "serving_batch_compute_duration_seconds", **LIN)
    _, size_count, size_sum = histogram(families, "serving_batch_size_rows", **LIN)
    assert compute_count == size_count == batches.value and compute_sum > 0
    assert size_sum == rows.value


def test_model_loads_and_failures_and_the_process_are_measured(server):
    families = scrape(server)
    (load,) = samples(families["serving_model_load_seconds"], model="lin", version="1")
    assert load.value > 0
    (failures,) = samples(families["serving_model_load_failures"], "_total", model="broken")
    assert failures.value == 1
    assert samples(families["process_resident_memory_bytes"])[0].value > 0
    assert samples(families["process_open_fds"])[0].value > 0
    assert "serving_gpu_memory_bytes" not in families  # no CUDA device in use: nothing at all


def test_an_unknown_model_counts_under_no_model_name(server):
    assert server.post("/v1/models/nope:predict", {"instances": [[1.0]]})[0] == 404
    families = scrape(server)
    (missing,) = samples(families["serving_requests"], "_total", code="NOT_FOUND", model="", signature="")
    assert missing.value >= 1
    assert not [s for f in families.values() for s in f.samples if s.labels.get("model") == "nope"]
