"""The Kubernetes manifests of deploy/kubernetes/: valid objects of a pinned Kubernetes version (its own
OpenAPI schemas, strict: no unknown field), and consistent with the server they run: flags it takes, routes
it answers, ports, the drain's timing, the image's user, the metric the autoscaler reads."""

import copy
from pathlib import Path

import pytest

from serving.cli import parse_settings
from tests.helpers import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of kubernetes-validate) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra) is not installed")

KUBERNETES = "1.34.0"
PLAIN = ROOT / "deploy" / "kubernetes"


def objects(folder: Path) -> dict[str, dict]:
    """kind -> the object, for every Kubernetes object in the folder's YAML files."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in out, f"two {doc['kind']} objects"
                out[doc["kind"]] = doc
    return out


def test_every_object_is_valid_for_the_pinned_kubernetes():
    found = objects(PLAIN)
    assert set(found) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}
    for doc in found.values():
        kv.validate(doc, KUBERNETES, strict=True)  # raises on any error
    bad = copy.deepcopy(found["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # a misspelt field
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES, strict=True)


def test_the_kustomization_lists_every_file():
    kustomization = yaml.safe_load((PLAIN / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in PLAIN.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_deployment_runs_the_server_as_its_flags_and_routes_say():
    found = objects(PLAIN)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = parse_settings(container["args"])  # every flag is the server's (argparse exits otherwise)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.rest_api_port, "grpc": settings.port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The pod's grace period covers the drain's delay and its own grace period.
    assert pod["terminationGracePeriodSeconds"] > (settings.drain_delay_seconds
                                                   + settings.termination_grace_period_seconds)
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER
    service_ports = {p["name"]: p["targetPort"] for p in found["Service"]["spec"]["ports"]}
    assert service_ports == {"http": "http", "grpc": "grpc"}
    selector = found["Deployment"]["spec"]["selector"]["matchLabels"]
    assert found["Service"]["spec"]["selector"] == selector
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_the_autoscaler_reads_the_metric_the_adapter_makes_from_the_servers_histogram():
    found = objects(PLAIN)
    rules = yaml.safe_load(found["ConfigMap"]["data"]["config.yaml"])["rules"]
    made = {rule["name"]["as"]: rule["seriesQuery"] for rule in rules}
    wanted = [m["pods"]["metric"]["name"] for m in found["HorizontalPodAutoscaler"]["spec"]["metrics"]
              if m["type"] == "Pods"]
    assert wanted and all(name in made for name in wanted)
    source = (ROOT / "serving" / "ops" / "metrics.py").read_text()
    for query in made.values():
        family = query.split("{")[0].removesuffix("_bucket")
        assert f'HistogramMetricFamily("{family}"' in source, family
