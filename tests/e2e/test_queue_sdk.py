"""The cloud SDK's own queue tests (`eas_prediction/test_queue_client.py`, unchanged) against our queues: an
embedded async service of a two-output PMML model (the SDK's inference tests read two fields from the answer to
`[{}]`) and `serving queue`, each on SQLite and on Redis (Debian's redis-server, tests/redis_server.py). The SDK
pins protobuf 3.20.3, so it lives in a virtualenv of its own, made once (under the user's cache) and driven as a
subprocess."""

import os
import signal
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT, Server, free_port, wait_until
from tests.redis_server import RedisServer, needs_redis

pytest.importorskip("pypmml", reason="pypmml (extra pmml) is not installed")

SDK_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "serving-engine" / "eas-prediction-venv"
#: Runs the SDK's test module with its module-level endpoint, queue names and token pointed at ours.
DRIVER = """
import sys, unittest
from eas_prediction import test_queue_client as t
t.QueueEndpoint, t.QueueName, t.QueueToken = sys.argv[1], sys.argv[2], sys.argv[3]
t.SinkQueueName = sys.argv[2] + "/sink"
names = ["QueueClientTestCase." + n for n in sys.argv[4:]]
loader = unittest.defaultTestLoader
suite = loader.loadTestsFromNames(names, t) if names else loader.loadTestsFromModule(t)
sys.exit(not unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful())
"""
TOKEN = "sdk-token"
#: The SDK's tests that need no inference service behind the queue.
QUEUE_ONLY = ["test_queue_get_by_index", "test_queue_get_by_request_id", "test_queue_truncate", "test_watch_async",
              "test_watch_with_auto_commit", "test_watch_with_manual_commit", "test_watch_with_two_watcher"]

TWO_OUTPUTS = """<?xml version="1.0" encoding="UTF-8"?>
<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4">
  <Header description="two outputs, every input optional"/>
  <DataDictionary numberOfFields="3">
    <DataField name="age" optype="continuous" dataType="integer"/>
    <DataField name="cp" optype="categorical" dataType="integer"><Value value="0"/><Value value="3"/></DataField>
    <DataField name="target" optype="categorical" dataType="string"><Value value="0"/><Value value="1"/></DataField>
  </DataDictionary>
  <TreeModel functionName="classification" splitCharacteristic="binarySplit">
    <MiningSchema>
      <MiningField name="age" missingValueReplacement="50"/><MiningField name="cp" missingValueReplacement="0"/>
      <MiningField name="target" usageType="target"/>
    </MiningSchema>
    <Output>
      <OutputField name="p_0" feature="probability" value="0" dataType="double" optype="continuous"/>
      <OutputField name="p_1" feature="probability" value="1" dataType="double" optype="continuous"/>
    </Output>
    <Node id="0" score="0"><True/>
      <Node id="1" score="1"><SimplePredicate field="cp" operator="equal" value="3"/>
        <ScoreDistribution value="0" recordCount="1"/><ScoreDistribution value="1" recordCount="9"/></Node>
      <Node id="2" score="0"><True/>
        <ScoreDistribution value="0" recordCount="8"/><ScoreDistribution value="1" recordCount="2"/></Node>
    </Node>
  </TreeModel>
</PMML>
"""


@pytest.fixture(scope="module")
def sdk_python():
    python = SDK_VENV / "bin" / "python"
    if not (SDK_VENV / ".installed").exists():
        venv.create(SDK_VENV, with_pip=True, clear=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "eas-prediction"], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"cannot install eas-prediction into {SDK_VENV}: {done.stderr[-500:]}")
        (SDK_VENV / ".installed").touch()
    return python


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=needs_redis)])
def store(request, tmp_path):
    """The queues' store: a SQLite file, or a Redis started for the test."""
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'q.db'}"
        return
    with RedisServer(tmp_path / "redis") as server:
        yield server.url()


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def run_sdk_tests(python, port, name, *tests):
    done = subprocess.run([str(python), "-c", DRIVER, f"127.0.0.1:{port}", name, TOKEN, *tests], cwd="/",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def test_the_sdks_queue_tests_pass_against_an_embedded_async_service(sdk_python, store, tmp_path):
    (tmp_path / "svc" / "1").mkdir(parents=True)
    (tmp_path / "svc" / "1" / "model.pmml").write_text(TWO_OUTPUTS)
    (tmp_path / "service.json").write_text(f'{{"name": "svc", "processor": "pmml", "model_path": '
                                           f'"{tmp_path / "svc"}", "token": "{TOKEN}", "metadata": '
                                           f'{{"type": "Async", "rpc": {{"max_batch_size": 8}}}}}}')
    with Server(f"--service_config={tmp_path / 'service.json'}", f"--queue_store={store}") as s:
        report = run_sdk_tests(sdk_python, s.port, "svc")
    assert "Ran 9 tests" in report


def test_the_sdks_queue_tests_pass_against_serving_queue(sdk_python, store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", "queue", "--host", "127.0.0.1", f"--port={port}",
                             f"--store={store}", f"--token={TOKEN}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: ready(port), 20, "serving queue")
        report = run_sdk_tests(sdk_python, port, "test_group.qservice", *QUEUE_ONLY)
        assert f"Ran {len(QUEUE_ONLY)} tests" in report
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
