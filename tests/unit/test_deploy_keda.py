"""The KEDA sample of deploy/keda/: the queue service (`serving queue`) and the engines that subscribe to it,
valid objects of a pinned Kubernetes version (its own schemas, strict), and a ScaledObject with only the fields
KEDA's CRD (keda.sh/v1alpha1) and its prometheus scaler document, reading a series the queue service exports,
scaling the engines' Deployment to zero."""

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.cli import parse_settings
from serving.queue.metrics import QueueCollector
from serving.queue.queue import QueueLimits
from serving.queue.service import QueueService
from serving.queue.standalone import build_parser
from serving.queue.store import SqliteStore
from tests.helpers import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of kubernetes-validate) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra) is not installed")

KUBERNETES = "1.34.0"
KEDA = ROOT / "deploy" / "keda"
# KEDA's ScaledObjectSpec and ScaleTriggers (apis/keda/v1alpha1/scaledobject_types.go), by JSON name.
SCALED_OBJECT_SPEC_FIELDS = {"scaleTargetRef", "pollingInterval", "initialCooldownPeriod", "cooldownPeriod",
                             "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced", "triggers",
                             "fallback"}
SCALE_TARGET_FIELDS = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER_FIELDS = {"type", "name", "useCachedMetrics", "metadata", "authenticationRef", "metricType"}
# The prometheus scaler's trigger metadata (keda.sh/docs/latest/scalers/prometheus/).
PROMETHEUS_FIELDS = {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
                     "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout", "authModes"}
PROMETHEUS_REQUIRED = {"serverAddress", "query", "threshold"}


def documents(folder: Path) -> dict[str, dict]:
    """file name -> the one object in it, for the folder's YAML files but the kustomization."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            (out[path.name],) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_name(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents(KEDA).values() if doc["kind"] == kind}


def container(deployment: dict) -> dict:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def test_the_kubernetes_objects_are_valid_for_the_pinned_kubernetes():
    kinds = sorted(doc["kind"] for doc in documents(KEDA).values())
    assert kinds == ["Deployment", "Deployment", "PersistentVolumeClaim", "ScaledObject", "Service"]
    for doc in documents(KEDA).values():
        if doc["kind"] != "ScaledObject":  # not a built-in kind: checked against KEDA's fields below
            kv.validate(doc, KUBERNETES, strict=True)  # raises on any error


def test_the_kustomization_lists_every_file():
    kustomization = yaml.safe_load((KEDA / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == set(documents(KEDA))


def test_the_scaledobject_uses_only_fields_of_kedas_crd_and_its_prometheus_scaler():
    (scaled,) = by_name("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_FIELDS, set(spec) - SCALED_OBJECT_SPEC_FIELDS
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_FIELDS
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int), key  # int32 in the CRD
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert PROMETHEUS_REQUIRED <= set(metadata) <= PROMETHEUS_FIELDS, set(metadata) ^ PROMETHEUS_FIELDS
    assert all(isinstance(value, str) for value in metadata.values())  # map[string]string in the CRD
    assert float(metadata["threshold"]) > 0 and float(metadata["activationThreshold"]) >= 0
    assert metadata["serverAddress"].startswith("http")


def test_the_scaledobject_scales_the_subscribing_engines_to_zero():
    (scaled,) = by_name("ScaledObject").values()
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    target = spec["scaleTargetRef"]
    engine = by_name("Deployment")[target["name"]]
    assert target.get("apiVersion", "apps/v1") == engine["apiVersion"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert "replicas" not in engine["spec"]  # KEDA's HPA owns them
    settings = parse_settings(container(engine)["args"])  # every flag is the server's
    queue_service = by_name("Service")["serving-queue"]
    (port,) = queue_service["spec"]["ports"]
    assert settings.queue_endpoint == f"http://{queue_service['metadata']['name']}:{port['port']}"
    assert not settings.async_service  # the queues live in the queue service, which stays up at zero engines
    assert f'queue="{settings.model_name}"' in spec["triggers"][0]["metadata"]["query"]


def test_the_queue_service_runs_serving_queue_on_its_volume():
    queue = by_name("Deployment")["serving-queue"]
    spec = queue["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # SQLite: one writer
    found = container(queue)
    assert found["command"] == ["serving", "queue"]  # the image's entrypoint is the engine
    args = build_parser().parse_args(found["args"])  # every flag is `serving queue`'s (argparse exits otherwise)
    ports = {p["name"]: p["containerPort"] for p in found["ports"]}
    assert ports == {"http": args.port}
    assert by_name("Service")["serving-queue"]["spec"]["selector"] == spec["selector"]["matchLabels"]
    (mount,) = found["volumeMounts"]
    assert args.store.startswith(f"sqlite:{mount['mountPath']}/")
    (volume,) = spec["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] in by_name("PersistentVolumeClaim")
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(args.port)
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > args.termination_grace_period_seconds
    assert found["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert found["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_query_reads_a_series_the_queue_service_exports(tmp_path):
    (scaled,) = by_name("ScaledObject").values()
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    selector = query[query.index("{") + 1:query.index("}")]
    labels = dict(pair.split("=") for pair in selector.split(","))
    labels = {key: value.strip('"') for key, value in labels.items()}
    name = query[query.index("(") + 1:query.index("{")]

    async def backlog() -> dict[tuple[str, tuple], float]:
        service = QueueService(SqliteStore(tmp_path / "q.db"), QueueLimits(100, 1 << 20))
        try:
            for queue_name in (labels["queue"], labels["queue"] + "/sink"):
                queue = service.lookup(queue_name)
                assert queue is not None
                await queue.put(b"[[1.0]]", {})
                if queue_name == labels["queue"]:
                    await queue.put(b"[[2.0]]", {})
            registry = CollectorRegistry(auto_describe=False)
            registry.register(QueueCollector(lambda: list(service.queues.values())))
            text = generate_latest(registry).decode()
        finally:
            service.close()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    series = asyncio.run(backlog())
    matched = [value for (metric, found), value in series.items()
               if metric == name and set(labels.items()) <= set(found)]
    assert matched == [2.0]  # the input's two items, not the sink's
