"""`--workers` in process: how many workers (cores, cgroup quotas and memory limits), and merging what the
workers report (metrics, statistics, readiness, access log blocks). The supervisor and its workers as a
process tree: tests/e2e/test_workers.py."""

import os

import pytest

from serving.ops.accesslog import blocks
from serving.platform.siblings import Peers, merge_metrics, merge_statistics
from serving.platform.workers import available_cores, cgroup_cpu_limit, cgroup_memory_limit, worker_count

# ---- how many workers ----

def test_worker_count_takes_a_number_or_the_cores():
    assert worker_count("3") == 3 and worker_count(" 1 ") == 1
    assert worker_count("auto") == worker_count("0") == available_cores() >= 1
    assert available_cores() <= len(os.sched_getaffinity(0))
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ValueError, match="--workers: expected a number of worker processes, 0 or auto"):
            worker_count(bad)


def test_cgroup_quota_v2_of_the_group_and_those_above_it_and_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    assert cgroup_cpu_limit(tmp_path, proc) is None  # no cpu.max anywhere
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None  # "max": no quota
    (tmp_path / "kubepods" / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 2.5  # the parent's quota bounds the child
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 1.5  # the smallest
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") is None


def test_cgroup_memory_limit_v2_up_the_tree_and_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    assert cgroup_memory_limit(tmp_path, proc) is None
    (tmp_path / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path, proc) is None
    (tmp_path / "kubepods" / "memory.max").write_text("2147483648\n")
    assert cgroup_memory_limit(tmp_path, proc) == 2 << 30
    (tmp_path / "kubepods" / "pod1" / "memory.max").write_text("1073741824\n")
    assert cgroup_memory_limit(tmp_path, proc) == 1 << 30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert cgroup_memory_limit(v1, tmp_path / "none") is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert cgroup_memory_limit(v1, tmp_path / "none") == 512 << 20


# ---- merging what the workers report ----

def test_counters_and_histograms_add_up_and_gauges_stay_per_worker():
    def state(requests, bucket, inf, rss, created):
        return [
            {"name": "reqs", "type": "counter", "help": "requests", "unit": "", "samples": [
                ["reqs_total", {"model": "m"}, requests], ["reqs_created", {"model": "m"}, created]]},
            {"name": "lat", "type": "histogram", "help": "latency", "unit": "", "samples": [
                ["lat_bucket", {"le": "0.1"}, bucket], ["lat_bucket", {"le": "+Inf"}, inf],
                ["lat_count", {}, inf], ["lat_sum", {}, 0.5 * inf]]},
            {"name": "rss", "type": "gauge", "help": "memory", "unit": "", "samples": [["rss", {}, rss]]},
        ]

    merged = {m.name: m for m in merge_metrics([(0, state(3, 1, 3, 100.0, 50.0)), (1, state(4, 4, 5, 200.0, 40.0))])}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in merged.values() for s in m.samples}
    assert samples[("reqs_total", (("model", "m"),))] == 7
    assert samples[("reqs_created", (("model", "m"),))] == 40.0  # the earliest
    assert samples[("lat_bucket", (("le", "0.1"),))] == 5 and samples[("lat_bucket", (("le", "+Inf"),))] == 8
    assert samples[("lat_count", ())] == 8 and samples[("lat_sum", ())] == 4.0
    assert samples[("rss", (("worker", "0"),))] == 100.0 and samples[("rss", (("worker", "1"),))] == 200.0
    assert merged["lat"].type == "histogram" and merged["rss"].type == "gauge"


def test_a_restarted_workers_earlier_counts_stay_in_the_sum_and_a_dead_ones_last_counts_too(tmp_path):
    (tmp_path / "ready").write_bytes(bytes(2))
    first, second = Peers(0, 2, tmp_path), Peers(1, 2, tmp_path)

    def state(life, requests, rss=1.0):
        return [
            {"name": "process_start_time_seconds", "type": "gauge", "help": "", "unit": "",
             "samples": [["process_start_time_seconds", {}, life]]},
            {"name": "reqs", "type": "counter", "help": "", "unit": "", "samples": [["reqs_total", {}, requests]]},
            {"name": "lat", "type": "histogram", "help": "", "unit": "", "samples": [
                ["lat_bucket", {"le": "+Inf"}, requests], ["lat_count", {}, requests], ["lat_sum", {}, requests / 2]]},
            {"name": "rss", "type": "gauge", "help": "", "unit": "", "samples": [["rss", {}, rss]]},
        ]

    def scrape_of(peers, states):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for m in merge_metrics(peers.tally(states)) for s in m.samples}

    assert scrape_of(first, {0: state(10.0, 5), 1: state(10.0, 7)})[("reqs_total", ())] == 12
    gone = scrape_of(first, {0: state(10.0, 6)})  # worker 1 died: what it counted stays, its gauges go
    assert gone[("reqs_total", ())] == 13 and gone[("lat_count", ())] == 13 and gone[("lat_sum", ())] == 6.5
    assert ("rss", (("worker", "1"),)) not in gone and gone[("rss", (("worker", "0"),))] == 1.0
    back = scrape_of(second, {1: state(11.5, 2), 0: state(10.0, 6)})  # restarted, and it answers the scrape
    assert back[("reqs_total", ())] == 6 + 7 + 2 and back[("lat_bucket", (("le", "+Inf"),))] == 15
    # An answer of its earlier life that comes late adds nothing; the next scrape, from the other worker,
    # still has everything.
    assert scrape_of(first, {0: state(10.0, 6), 1: state(10.0, 8)})[("reqs_total", ())] == 15
    assert scrape_of(first, {0: state(10.0, 9), 1: state(11.5, 4)})[("reqs_total", ())] == 9 + 7 + 4


def test_the_tree_is_ready_while_a_worker_that_was_ready_restarts_and_not_before_every_worker_loaded(tmp_path):
    (tmp_path / "ready").write_bytes(bytes(2))
    first, second = Peers(0, 2, tmp_path), Peers(1, 2, tmp_path)
    first.mark(True)
    second.mark(False, starting=True)
    assert not first.all_ready() and first.count_ready() == 1  # start-up: worker 1 is still loading
    second.mark(True)
    assert first.all_ready()
    second.leave()  # draining alone, or killed (the supervisor marks it so): the supervisor restarts it
    assert first.all_ready()
    second.mark(False, starting=True)  # its successor loading
    assert first.all_ready()
    second.mark(False)  # it started, and its models are not all available: not ready
    assert not first.all_ready()
    second.mark(True)
    first.leave()
    second.leave()
    assert not first.all_ready()  # none serves


def test_statistics_reports_add_up_per_version_and_batch_size():
    def stat(version, success, ns, last, batches):
        return {"name": "m", "version": version, "last_inference": last, "inference_count": success,
                "execution_count": sum(n for _, n in batches),
                "inference_stats": {"success": {"count": success, "ns": ns}, "fail": {"count": 0, "ns": 0}},
                "batch_stats": [{"batch_size": size, "compute_infer": {"count": n, "ns": 10 * n}}
                                for size, n in batches]}

    merged = merge_statistics([{"model_stats": [stat("1", 3, 300, 1000, [(1, 3)])]},
                               {"model_stats": [stat("1", 5, 500, 2000, [(1, 1), (4, 1)]), stat("2", 1, 9, 5, [])]}])
    one, two = merged["model_stats"]
    assert (one["name"], one["version"], two["version"]) == ("m", "1", "2")
    assert one["inference_count"] == 8 and one["execution_count"] == 5 and one["last_inference"] == 2000
    assert one["inference_stats"]["success"] == {"count": 8, "ns": 800}
    assert one["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 4, "ns": 40}},
                                  {"batch_size": 4, "compute_infer": {"count": 1, "ns": 10}}]
    assert two["inference_count"] == 1


def test_access_log_blocks_are_whole_lines_of_at_most_pipe_buf():
    lines = [b"x" * 100 + b"\n"] * 100 + [b"y" * 5000 + b"\n", b"z\n"]
    out = list(blocks(lines, 4096))
    assert b"".join(out) == b"".join(lines)
    assert all(len(b) <= 4096 or b.count(b"\n") == 1 for b in out)  # a longer block is one long line
    assert all(b.endswith(b"\n") for b in out)
