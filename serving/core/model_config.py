"""Which models to serve: `ModelSpec` data built from model_config.pbtxt or the single-model flags.

`model_config.pbtxt` is the text format of TF Serving's `ModelServerConfig`, parsed with protobuf's
`text_format` against our wire-compatible protos and validated as TF Serving does (unique names,
absolute base paths, model_platform required in the file).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from google.protobuf import text_format

from .._proto.tensorflow_serving.config import model_server_config_pb2 as msc
from ..errors import invalid_argument
from .remote import URL_PREFIXES

if TYPE_CHECKING:
    from ..settings import Settings


class ConfigError(ValueError):
    """A model configuration that cannot be served; the message says why."""


@dataclass(frozen=True)
class VersionPolicy:
    """latest{num_versions} / all{} / specific{versions}: which versions on disk to serve."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, on_disk: set[int]) -> set[int]:
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return on_disk & self.versions
        return set(sorted(on_disk)[-self.num_versions:]) if on_disk else set()

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {{num_versions: {self.num_versions}}}"
        if self.kind == "specific":
            return f"specific {{versions: {sorted(self.versions)}}}"
        return "all {}"


@dataclass(frozen=True)
class RequestLogSpec:
    """Where a model's sampled calls go: `<prefix>.<n>.tfrecord`, a share `sample_rate` of them."""

    prefix: str
    sample_rate: float


def log_spec_from_proto(config: Any, where: str) -> RequestLogSpec | None:
    """A ModelConfig's `logging_config`, validated as TF Serving does (a collector type it knows)."""
    if not config.HasField("logging_config") or not config.logging_config.HasField("log_collector_config"):
        return None  # no collector named: nothing is logged (TF Serving's files may carry a sampling rate alone)
    collector = config.logging_config.log_collector_config
    if collector.type not in ("", "file"):
        raise ConfigError(f"{where}: log_collector_config type {collector.type!r} is not one this server has "
                          f"(\"file\" or empty)")
    if not collector.filename_prefix:
        raise ConfigError(f"{where}: log_collector_config needs a filename_prefix")
    return RequestLogSpec(collector.filename_prefix, checked_rate(config.logging_config.sampling_config.sampling_rate,
                                                                  where))


def log_spec_from_json(doc: Any, where: str) -> RequestLogSpec | None:
    """The service JSON's `"request_log": {"path": ..., "sample_rate": ...}`."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str) or not doc["path"]:
        raise ConfigError(f"{where}: \"request_log\" must be {{\"path\": ..., \"sample_rate\": ...}}")
    return RequestLogSpec(doc["path"], checked_rate(doc.get("sample_rate", 1.0), where))


def checked_rate(rate: Any, where: str) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: sampling rate {rate!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: sampling rate {value} is not between 0 and 1")
    return value


@dataclass(frozen=True)
class ShadowSpec:
    """A version that also runs a sample of the model's answered calls; its answers are compared, never
    returned."""

    version: int
    sample_rate: float = 1.0


def shadow_from_proto(config: Any, where: str) -> ShadowSpec | None:
    if not config.HasField("shadow_version"):
        return None
    shadow = config.shadow_version
    if shadow.version <= 0:
        raise ConfigError(f"{where}: shadow_version needs a version")
    return ShadowSpec(shadow.version, checked_rate(shadow.sample_rate or 1.0, where))


def shadow_from_json(doc: Any, where: str) -> ShadowSpec | None:
    """The service JSON's `"shadow": {"version": 2, "sample_rate": 1.0}`."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int) or doc["version"] <= 0:
        raise ConfigError(f"{where}: \"shadow\" must be {{\"version\": N, \"sample_rate\": ...}}")
    return ShadowSpec(doc["version"], checked_rate(doc.get("sample_rate", 1.0), where))


#: A model's ONNX Runtime options (`onnx { ... }` in model_config.pbtxt, `"onnx": {...}` in the service JSON)
#: and the JSON type of each; the onnx processor checks the values (levels, providers) when it loads.
ONNX_KEYS: dict[str, type] = {
    "providers": list, "graph_optimization_level": str, "intra_op_threads": int, "inter_op_threads": int,
    "optimized_model_cache": bool, "trt_fp16_enable": bool, "trt_engine_cache_enable": bool,
    "trt_engine_cache_path": str,
}
TYPE_WORDS = {list: "a list of provider names", str: "a string", int: "a whole number >= 0", bool: "true or false"}


def onnx_from_proto(config: Any, where: str) -> dict[str, object]:
    """A ModelConfig's `onnx` (our field 1004) as the processor options `{"onnx": {...}}`; {} when unset."""
    if not config.HasField("onnx"):
        return {}
    doc = {f.name: list(v) if f.name == "providers" else v for f, v in config.onnx.ListFields()}
    return checked_onnx(doc, where)


def checked_onnx(doc: Any, where: str) -> dict[str, object]:
    """The service JSON's `"onnx": {...}` (or the pbtxt's, as a dict) as processor options; a ConfigError
    that names the key for an unknown key or a value of the wrong type."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: \"onnx\" must be an object of ONNX Runtime options ({', '.join(ONNX_KEYS)})")
    unknown = sorted(set(doc) - set(ONNX_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown onnx option(s) {', '.join(map(str, unknown))} "
                          f"(known: {', '.join(ONNX_KEYS)})")
    for key, value in doc.items():
        kind = ONNX_KEYS[key]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is int:
            ok = ok and value >= 0
        if kind is list:
            ok = ok and all(isinstance(p, str) and p for p in value)
        if not ok:
            raise ConfigError(f"{where}: onnx {key}: {value!r} is not {TYPE_WORDS[kind]}")
    return {"onnx": dict(doc)} if doc else {}


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: name, base path with integer version dirs, processor, policy, labels."""

    name: str
    base_path: str
    platform: str | None = None  # None: detected from the files of each version
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    options: dict[str, object] = field(default_factory=dict)
    #: version -> percent of the requests that name no version and no label (empty: the latest serves)
    traffic: dict[int, int] = field(default_factory=dict)
    #: sampled predict calls with their answers go to TFRecord files (serving/ops/requestlog.py); None: not logged
    request_log: RequestLogSpec | None = None
    #: a version that also runs a sample of the answered calls (serving/ops/shadow.py); None: none
    shadow: ShadowSpec | None = None
    #: A base path without version folders that holds the model files (the cloud service form, KServe's
    #: /mnt/models), or one folder that does, serves them as version 1.
    flat: bool = False
    #: Loaded at start and never unloaded to make room (--pin_model, `pinned: true` in model_config.pbtxt).
    pinned: bool = False


def policy_from_proto(p: msc.ModelConfig) -> VersionPolicy:
    if not p.HasField("model_version_policy"):
        return VersionPolicy()
    pol = p.model_version_policy
    choice = pol.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        if not pol.specific.versions:
            raise ConfigError(f"model {p.name}: specific version policy lists no versions")
        return VersionPolicy("specific", versions=frozenset(pol.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=pol.latest.num_versions or 1)
    return VersionPolicy()


#: A model name: what TF Serving's and Triton's repositories hold (a folder name), and nothing that could break
#: a line of the metrics, the logs or a header: letters, digits, `.`, `_`, `-`; not `.` or `..`.
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_NAME_LENGTH = 128


def name_error(name: str) -> str | None:
    """Why `name` cannot be a model's name; None when it can."""
    if MODEL_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    shown = repr(name[:MAX_NAME_LENGTH]) + ("..." if len(name) > MAX_NAME_LENGTH else "")
    return (f"model name {shown} is not one this server accepts: 1 to {MAX_NAME_LENGTH} letters, digits, '.', "
            f"'_' or '-'")


def checked_name(name: str) -> str:
    """`name` when it can be a model's name; INVALID_ARGUMENT otherwise (a name a client sends)."""
    error = name_error(name)
    if error is not None:
        raise invalid_argument(error)
    return name


def parse_model_config(text: str, source: str = "model config") -> list[ModelSpec]:
    """Parse and validate the text of a ModelServerConfig; raises ConfigError."""
    config = msc.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a valid ModelServerConfig: {e}") from e
    return specs_from_proto(config, source)


def specs_from_proto(config: msc.ModelServerConfig, source: str = "model config") -> list[ModelSpec]:
    """Validate a ModelServerConfig message (file or reload RPC) as TF Serving does; raises ConfigError."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for c in config.model_config_list.config:
        if not c.name:
            raise ConfigError(f"{source}: a model config has no name")
        if (error := name_error(c.name)) is not None:
            raise ConfigError(f"{source}: {error}")
        if c.name in seen:
            raise ConfigError(f"{source}: Illegal to list model {c.name} multiple times in config list")
        seen.add(c.name)
        if not os.path.isabs(c.base_path) and not c.base_path.startswith(URL_PREFIXES):
            raise ConfigError(
                f"{source}: Expected model {c.name} to have an absolute path; got base_path()={c.base_path}"
            )
        if not c.model_platform:
            raise ConfigError(f"{source}: Illegal setting model_platform to empty for model {c.name}")
        specs.append(
            ModelSpec(
                name=c.name,
                base_path=c.base_path,
                platform=c.model_platform,
                policy=policy_from_proto(c),
                labels=dict(c.version_labels),
                traffic=checked_traffic(dict(c.version_traffic), f"{source}: model {c.name}"),
                request_log=log_spec_from_proto(c, f"{source}: model {c.name}"),
                shadow=shadow_from_proto(c, f"{source}: model {c.name}"),
                pinned=c.pinned,  # our extension (field 1003)
                options=onnx_from_proto(c, f"{source}: model {c.name}"),  # our extension (field 1004)
            )
        )
    return specs


def checked_traffic(traffic: dict[object, object], where: str) -> dict[int, int]:
    """Weights by version ({"1": 90, "2": 10} from JSON, {1: 90, 2: 10} from the proto): whole percents
    that sum to 100; a ConfigError that says what is wrong otherwise."""
    if not traffic:
        return {}
    out: dict[int, int] = {}
    for version, weight in traffic.items():
        try:
            v, w = int(str(version)), int(str(weight))
        except ValueError:
            raise ConfigError(f"{where}: traffic {version!r}: {weight!r} is not version: percent") from None
        if v <= 0 or not 0 <= w <= 100:
            raise ConfigError(f"{where}: traffic {v}: {w}: versions are positive, weights 0 to 100")
        out[v] = w
    if sum(out.values()) != 100:
        raise ConfigError(f"{where}: the traffic weights sum to {sum(out.values())}, not 100: "
                          f"{', '.join(f'{v}: {w}' for v, w in sorted(out.items()))}")
    return out


def missing_base_paths(specs: list[ModelSpec]) -> list[str]:
    """TF Serving's words for each spec whose base path is not a directory: a model no poll can load."""
    return [f"Could not find base path {s.base_path} for servable {s.name}"
            for s in specs if not os.path.isdir(s.base_path) and "://" not in s.base_path
            and not os.path.isfile(s.base_path)]


def read_model_config_file(path: str | Path) -> list[ModelSpec]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read model config file {path}: {e.strerror}") from e
    return parse_model_config(text, str(path))


#: A version is an int64, as in TF Serving's ModelSpec and Triton's repository.
MAX_VERSION = 2**63 - 1


def version_number(text: str) -> int:
    """A version a request names in its path or a string field (ASCII digits, an optional minus) as an int64;
    INVALID_ARGUMENT (TF Serving's words) when it is not one."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or abs(int(text)) > MAX_VERSION:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return int(text)


def list_versions(base_path: str, flat: bool = False) -> dict[int, Path]:
    """The integer-named child directories of a base path (`00000123` is version 123); with `flat`, a
    base path without any that holds files is version 1 itself, and one that holds a single folder (and no
    file) is read as that folder (hidden entries and `lost+found` aside)."""
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return found
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir():
            found[int(entry.name)] = Path(entry.path)
    if flat and not found:
        if any(e.is_file() and not e.name.startswith(".") for e in entries):
            found[1] = Path(base_path)
        else:  # KServe's storage initializer may leave the model one folder down: /mnt/models/<name>/...
            folders = [e for e in entries if e.is_dir() and not e.name.startswith(".") and e.name != "lost+found"]
            if len(folders) == 1:
                return list_versions(folders[0].path, flat)
    return found


# ---- the models the settings name ----

def specs_from_settings(settings: Settings) -> list[ModelSpec]:
    """The models to serve at start-up: the config file, or the single-model flags."""
    if settings.model_config_file:
        specs = read_model_config_file(settings.model_config_file)
    elif settings.model_base_path:
        if (error := name_error(settings.model_name)) is not None:
            raise ConfigError(f"--model_name: {error}")
        traffic, request_log, shadow, options = (service_extras(settings.service_config)
                                                 if settings.service_config else ({}, None, None, {}))
        if shadow is not None and not traffic:
            raise ConfigError(f"service config {settings.service_config}: \"shadow\" needs \"traffic\" naming the "
                              f"version(s) that answer (e.g. {{\"1\": 100}})")
        served = {*traffic, *([shadow.version] if shadow is not None else [])}
        specs = [
            ModelSpec(
                name=settings.model_name,
                base_path=(settings.model_base_path if settings.model_base_path.startswith(URL_PREFIXES)
                           else os.path.abspath(settings.model_base_path)),
                platform=settings.model_platform or None,
                flat=True,  # the model files directly in the base path (KServe's /mnt/models) are version 1
                # The versions a split names are the ones served (else the latest alone).
                policy=VersionPolicy("specific", versions=frozenset(served)) if traffic else VersionPolicy(),
                traffic=traffic,
                request_log=request_log,
                shadow=shadow,
                options=options,
            )
        ]
    elif may_start_empty(settings):
        specs = []
    else:
        raise ConfigError("Either --model_config_file or --model_base_path (or env MODEL_BASE_PATH) must be set")
    return with_runtime(specs, settings)


def service_extras(path: str) -> tuple[dict[int, int], RequestLogSpec | None, ShadowSpec | None,
                                       dict[str, object]]:
    """The service JSON's `"traffic": {"1": 90, "2": 10}`, `"request_log": {"path", "sample_rate"}`,
    `"shadow": {"version", "sample_rate"}` and `"onnx": {...}` as processor options (settings.py read the
    rest of it)."""
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise ConfigError(f"cannot read service config {path}: {e}") from e
    doc = doc if isinstance(doc, dict) else {}
    traffic = doc.get("traffic")
    if traffic is not None and not isinstance(traffic, dict):
        raise ConfigError(f"service config {path}: \"traffic\" must map versions to percents")
    where = f"service config {path}"
    return (checked_traffic(traffic or {}, where), log_spec_from_json(doc.get("request_log"), where),
            shadow_from_json(doc.get("shadow"), where), checked_onnx(doc.get("onnx"), where))


def may_start_empty(settings: Settings) -> bool:
    """A server whose models come when asked for (ModelMesh, explicit model control) may have none."""
    return settings.modelmesh_port > 0 or settings.model_control_mode == "explicit"


def with_runtime(specs: list[ModelSpec], settings: Settings) -> list[ModelSpec]:
    """The server-wide device and framework options, applied to every model spec."""
    options: dict[str, object] = {}
    if settings.tensorflow_intra_op_parallelism > 0:
        options["intra_op_threads"] = settings.tensorflow_intra_op_parallelism
    if settings.tensorflow_inter_op_parallelism > 0:
        options["inter_op_threads"] = settings.tensorflow_inter_op_parallelism
    if settings.gpu_memory_limit_mb > 0:
        options["gpu_memory_limit_mb"] = settings.gpu_memory_limit_mb
    if settings.fp16:
        options["fp16"] = True
    if settings.onnx_graph_optimization_level != "all":
        options["graph_optimization_level"] = settings.onnx_graph_optimization_level
    if settings.model_cache_dir:  # where the onnx processor keeps optimized graphs and TensorRT engines
        options["model_cache_dir"] = settings.model_cache_dir
    pins = set(names_of(settings.pin_model))
    return [dataclasses.replace(s, device=settings.device, options={**options, **s.options},
                                pinned=s.pinned or s.name in pins) for s in specs]


def names_of(text: str) -> list[str]:
    """The model names of a comma-separated flag (--load_model, --pin_model; a repeated flag is joined so)."""
    return [n.strip() for n in text.split(",") if n.strip()]
