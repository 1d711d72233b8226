"""The KServe and ModelMesh manifests of deploy/kserve/ and deploy/modelmesh/: custom resources with the fields
their CRDs (KServe's serving.kserve.io, ModelMesh Serving's) define and the rules KServe's webhook applies,
Kubernetes parts (containers, tolerations) valid for a pinned Kubernetes version (its own schemas, strict),
and consistent with the server they run: flags it takes, ports, routes, the environment it reads."""

from pathlib import Path

import pytest

from serving.cli import parse_settings
from tests.helpers import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of kubernetes-validate) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra) is not installed")

KUBERNETES = "1.34.0"
KSERVE = ROOT / "deploy" / "kserve"
MODELMESH = ROOT / "deploy" / "modelmesh"
GROUP_VERSION = {"ClusterServingRuntime": "serving.kserve.io/v1alpha1",
                 "ServingRuntime": "serving.kserve.io/v1alpha1",
                 "InferenceService": "serving.kserve.io/v1beta1"}
# KServe's ServingRuntimeSpec (pkg/apis/serving/v1alpha1/servingruntime_types.go), by JSON name.
RUNTIME_SPEC_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec",
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels", "annotations",
    "imagePullSecrets", "hostIPC",  # ServingRuntimePodSpec, inline
    "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter",
}
POD_SPEC_FIELDS = {"containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "hostIPC"}
FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
# KServe's ModelSpec: modelFormat, runtime, and PredictorExtensionSpec (storage, versions, an inline Container).
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "storage", "runtimeVersion", "protocolVersion",
                "ports", "resources", "env", "args"}
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]
FORMATS = {"tensorflow": {"1", "2"}, "pytorch": {"1", "2"}, "onnx": {"1"}, "xgboost": {"1", "2", "3"},
           "lightgbm": {"3", "4"}, "pmml": {"4"}}
CPU_FORMATS = FORMATS  # the CPU image carries torch's CPU build (Dockerfile.cpu)
# The highest priority KServe's own ClusterServingRuntimes give a format (config/runtimes/*.yaml).
BUILT_IN_PRIORITY = 3
# Ports a KServe pod's other containers hold: Knative's queue-proxy (8012, 8013, 8022, its metrics 9090 and
# 9091, profiling 8008: reserved by its webhook) and KServe's agent (9081).
KSERVE_TAKEN = {8012, 8013, 8022, 9090, 9091, 8008, 9081}
# Ports of a ModelMesh pod's own containers: mm (gRPC 8033, litelinks 8080, probes 8089, preStop 8090,
# metrics 2112), the puller (8086), the REST proxy (8008).
MODELMESH_TAKEN = {8033, 8080, 8089, 8090, 2112, 8086, 8008}


def documents(folder: Path) -> dict[str, dict]:
    """file name -> the one object in it, for the folder's YAML files but the kustomization."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            (out[path.name],) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def runtimes() -> dict[str, dict]:
    """runtime name -> runtime, both folders."""
    found = {**documents(KSERVE), **documents(MODELMESH)}
    return {doc["metadata"]["name"]: doc for doc in found.values()}


def samples() -> dict[str, dict]:
    return {f"{folder.parent.name}/{name}": doc
            for folder in (KSERVE / "samples", MODELMESH / "samples") for name, doc in documents(folder).items()}


def formats(runtime: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in runtime["spec"]["supportedModelFormats"]:
        out.setdefault(entry["name"], set()).add(entry["version"])
    return out


def pod(runtime: dict) -> dict:
    """The runtime's Kubernetes parts as the minimal Pod KServe / ModelMesh would build around them."""
    spec = runtime["spec"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": runtime["metadata"]["name"], "annotations": spec.get("annotations", {})},
            "spec": {key: value for key, value in spec.items() if key in POD_SPEC_FIELDS}}


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text.removesuffix(unit)) * factor
    return int(text)


def test_every_file_is_one_object_of_the_kind_and_group_version_its_crd_defines():
    kinds = {name: doc["kind"] for name, doc in {**documents(KSERVE), **documents(MODELMESH)}.items()}
    assert kinds == {"cluster-serving-runtime.yaml": "ClusterServingRuntime",
                     "cluster-serving-runtime-gpu.yaml": "ClusterServingRuntime",
                     "serving-runtime.yaml": "ServingRuntime"}
    assert {doc["kind"] for doc in samples().values()} == {"InferenceService"}
    for doc in [*runtimes().values(), *samples().values()]:
        assert doc["apiVersion"] == GROUP_VERSION[doc["kind"]], doc["metadata"]["name"]
        assert doc["metadata"]["name"]


def test_the_runtimes_use_only_fields_of_the_servingruntime_crd():
    for name, runtime in runtimes().items():
        spec = runtime["spec"]
        assert set(spec) <= RUNTIME_SPEC_FIELDS, (name, set(spec) - RUNTIME_SPEC_FIELDS)
        for entry in spec["supportedModelFormats"]:
            assert set(entry) <= FORMAT_FIELDS and entry["name"], (name, entry)
            assert isinstance(entry["version"], str), (name, entry)  # a number would fail the CRD's string
        assert spec["protocolVersions"] and set(spec["protocolVersions"]) <= set(PROTOCOLS), name


def test_the_kubernetes_parts_are_valid_for_the_pinned_kubernetes():
    for runtime in runtimes().values():
        kv.validate(pod(runtime), KUBERNETES, strict=True)  # raises on any error
    for sample in samples().values():  # a sample's container fields, in the container they merge into
        model = sample["spec"]["predictor"]["model"]
        container = {"name": "kserve-container", "image": "serving-engine:cpu",
                     **{key: value for key, value in model.items() if key in {"ports", "resources", "env", "args"}}}
        kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": sample["metadata"]["name"]},
                     "spec": {"containers": [container]}}, KUBERNETES, strict=True)
    bad = pod(runtimes()["serving-engine"])
    bad["spec"]["containers"][0]["readinessprobe"] = {}  # a misspelt field
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES, strict=True)


def test_the_kustomizations_list_every_runtime_and_no_sample():
    for folder in (KSERVE, MODELMESH):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Kustomization"
        assert set(kustomization["resources"]) == set(documents(folder)), folder.name


def test_the_cpu_runtime_autoselects_its_formats_over_kserves_own_runtimes():
    runtime = runtimes()["serving-engine"]
    spec = runtime["spec"]
    assert runtime["kind"] == "ClusterServingRuntime" and spec["multiModel"] is False
    assert spec["protocolVersions"] == PROTOCOLS
    assert formats(runtime) == CPU_FORMATS
    priorities = {entry["priority"] for entry in spec["supportedModelFormats"]}
    assert all(entry["autoSelect"] is True for entry in spec["supportedModelFormats"])
    # KServe's webhook: one priority per format within a runtime, at least 1; above the built-in runtimes'.
    assert len(priorities) == 1 and min(priorities) > BUILT_IN_PRIORITY


def test_the_gpu_runtime_is_the_cpu_one_on_a_gpu_chosen_only_by_name():
    cpu, gpu = runtimes()["serving-engine"]["spec"], runtimes()["serving-engine-gpu"]["spec"]
    assert formats(runtimes()["serving-engine-gpu"]) == FORMATS
    # Nothing autoSelects, so no priority (and no clash in KServe's webhook with the CPU runtime's).
    assert not any(entry.get("autoSelect") or "priority" in entry for entry in gpu["supportedModelFormats"])
    assert gpu["protocolVersions"] == cpu["protocolVersions"] and gpu["annotations"] == cpu["annotations"]
    (cpu_container,), (gpu_container,) = cpu["containers"], gpu["containers"]
    assert gpu_container["image"] == "serving-engine:gpu"
    assert gpu_container["args"] == [*cpu_container["args"], "--device=cuda"]
    assert parse_settings(gpu_container["args"]).device == "cuda"
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe", "securityContext"):
        assert gpu_container[probe] == cpu_container[probe], probe


@pytest.mark.parametrize("name", ["serving-engine", "serving-engine-gpu"])
def test_a_kserve_runtime_runs_the_server_as_kserve_expects(name):
    spec = runtimes()[name]["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the container KServe merges the predictor into
    settings = parse_settings(container["args"])  # every flag is the server's (argparse exits otherwise)
    assert settings.model_name == "{{.Name}}"  # KServe's template: the InferenceService's name
    assert settings.model_base_path == "/mnt/models"  # where KServe's storage initializer puts the model
    assert settings.rest_api_port == 8080  # Knative's and KServe's default port: no port declared
    assert "ports" not in container  # Knative routes one port; a gRPC InferenceService declares its own
    assert settings.port not in KSERVE_TAKEN and settings.rest_api_port not in KSERVE_TAKEN
    assert spec["annotations"] == {"prometheus.kserve.io/port": str(settings.rest_api_port),
                                   "prometheus.kserve.io/path": "/metrics"}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": settings.rest_api_port}, probe
    # The drain, delay included, ends inside Kubernetes' default 30 s grace period (a runtime cannot set it).
    assert 0 < settings.drain_delay_seconds < settings.termination_grace_period_seconds < 30
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001  # the images' USER
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_modelmesh_runtime_serves_models_through_its_own_model_runtime_api(monkeypatch):
    runtime = runtimes()["serving-engine-mm"]
    spec = runtime["spec"]
    assert runtime["kind"] == "ServingRuntime" and spec["multiModel"] is True
    assert spec["protocolVersions"] == ["grpc-v1", "grpc-v2"]
    assert formats(runtime) == CPU_FORMATS
    assert all(entry["autoSelect"] is True for entry in spec["supportedModelFormats"])
    assert "builtInAdapter" not in spec  # the server is the mmesh.ModelRuntime; no adapter in between
    assert not spec.get("storageHelper", {}).get("disabled", False)  # the puller fetches the models
    (container,) = spec["containers"]
    (env,) = container["env"]
    assert env == {"name": "CONTAINER_MEM_REQ_BYTES", "valueFrom": {"resourceFieldRef": {
        "containerName": container["name"], "resource": "requests.memory"}}}
    requested = quantity_bytes(container["resources"]["requests"]["memory"])
    monkeypatch.setenv(env["name"], str(requested))  # as the Downward API sets it
    settings = parse_settings(container["args"])
    assert spec["grpcEndpoint"] == f"port:{settings.modelmesh_port}" == "port:8085"
    assert spec["grpcDataEndpoint"] == f"port:{settings.port}" == "port:9000"
    assert settings.model_control_mode == "explicit" and not settings.load_model  # starts empty
    assert settings.container_memory_bytes == requested > settings.memory_headroom_bytes
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    ports = {settings.modelmesh_port, settings.port, settings.rest_api_port}
    assert len(ports) == 3 and not ports & MODELMESH_TAKEN
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": settings.rest_api_port}
    assert "readinessProbe" not in container  # ModelMesh's own container is the pod's readiness
    assert container["securityContext"]["runAsUser"] == 10001


def test_the_probed_and_scraped_paths_are_the_servers_routes():
    source = (ROOT / "serving" / "protocols" / "router.py").read_text()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f'"{path}"' in source, path


def test_every_sample_names_a_runtime_that_lists_its_format_and_protocol():
    found = runtimes()
    assert {sample["spec"]["predictor"]["model"]["modelFormat"]["name"]
            for name, sample in samples().items() if name.startswith("kserve/")} == set(FORMATS)
    for name, sample in samples().items():
        model = sample["spec"]["predictor"]["model"]
        assert set(model) <= MODEL_FIELDS, (name, set(model) - MODEL_FIELDS)
        runtime = found[model["runtime"]]
        assert model["modelFormat"]["name"] in formats(runtime), name
        assert model.get("protocolVersion", "v1") in PROTOCOLS, name
        modelmesh = sample["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") == "ModelMesh"
        assert modelmesh == runtime["spec"]["multiModel"], name
        if not modelmesh:
            assert model.get("protocolVersion", "v1") in runtime["spec"]["protocolVersions"], name
            assert "storageUri" in model, name


def test_the_samples_cover_each_kserve_protocol_and_the_grpc_one_declares_the_grpc_port():
    kserve = {name: sample["spec"]["predictor"]["model"] for name, sample in samples().items()
              if name.startswith("kserve/")}
    assert {model.get("protocolVersion", "v1") for model in kserve.values()} >= {"v1", "v2", "grpc-v2"}
    for name, model in kserve.items():
        (container,) = runtimes()[model["runtime"]]["spec"]["containers"]
        settings = parse_settings(container["args"])
        if model.get("protocolVersion", "v1").startswith("grpc"):
            # Knative takes one port per revision, named h2c for HTTP/2 (gRPC).
            assert model["ports"] == [{"name": "h2c", "containerPort": settings.port, "protocol": "TCP"}], name
        else:
            assert "ports" not in model, name  # KServe's default, 8080: the REST port
