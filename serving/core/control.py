"""Model control: which models load when, as Triton's `--model-control-mode`, and the model repository API
(Triton's extension of KServe V2: index, load, unload) over it.

- `none`: every configured model loads at start; nothing changes afterwards (no polling, no load/unload).
- `poll`: as `none`, and the base paths and config file are polled (today's default behaviour).
- `explicit`: only `--load_model` names load at start; the repository API loads and unloads the others.
- `lazy`: every configured model is known at start and loads on its first request (serving/core/lazy.py);
  the repository API may load one ahead of its requests, or unload one (its next request loads it again).

In explicit and lazy mode the pinned models (--pin_model, `pinned: true`) load at start, and a memory budget
(serving/core/budget.py) unloads the least recently used others to make room for a load.

The repository is what the server was configured with (the config file's models, or the single model);
a load may also name a model that is not in it by giving its base path (`"path"` parameter, or
`"base_path"` in the `config` JSON). ModelMesh's runtime API (serving/platform/modelmesh.py) loads and
unloads through the same `ModelControl`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import Code, ServingError, invalid_argument, not_found
from ..redact import redact
from .model_config import (
    ConfigError,
    ModelSpec,
    VersionPolicy,
    checked_name,
    names_of,
    read_model_config_file,
    with_runtime,
)
from .remote import URL_PREFIXES, default_cache_dir
from .repository import ModelManager, State

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

MODES = ("none", "poll", "explicit", "lazy")
#: Where ModelMesh's puller puts the models it downloads (its ROOT_MODEL_DIR), a default load root with
#: --modelmesh_port.
MODELMESH_MODEL_DIR = "/models"


class LoadRoots:
    """Where a model path that a client names may be (--model_load_roots): local folders, compared after
    following links, and URL prefixes. A load request naming anything else is refused before anything reads
    it, so a load cannot be used to read (or probe) the server's other files, or to fetch from a host of
    the client's choosing."""

    def __init__(self, roots: Iterable[str]) -> None:
        roots = [r.strip() for r in roots if r.strip()]
        self.urls = tuple(sorted({r.partition("#")[0] for r in roots if r.startswith(URL_PREFIXES)}))
        self.folders = tuple(sorted({os.path.realpath(r) for r in roots if not r.startswith(URL_PREFIXES)}))

    @classmethod
    def parse(cls, text: str) -> LoadRoots:
        return cls(text.split(","))

    def check(self, path: str, what: str = "the model path") -> str:
        """`path` when it is inside a root (a local one once its links are followed); PERMISSION_DENIED when
        it is outside every root, INVALID_ARGUMENT when it is not absolute."""
        if "\0" in path:  # no file has one; os.path would raise ValueError
            raise invalid_argument(f"{what} {redact(path)!r} holds a NUL byte")
        if path.startswith(URL_PREFIXES):
            if any(_under(path.partition("#")[0], root) for root in self.urls):
                return path
        else:
            if not os.path.isabs(path):
                raise invalid_argument(f"{what} must be an absolute path, got {path!r}")
            if any(_under(os.path.realpath(path), root) for root in self.folders):
                return path
        # The roots are not named: they are the server's layout, which a client has no need to learn.
        raise ServingError(Code.PERMISSION_DENIED, f"{what} {redact(path)!r} is outside the folders this server "
                                                   f"loads models from (--model_load_roots)")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith("/") else root + "/")

#: Triton's model states in the repository index.
INDEX_STATES = {State.START: "LOADING", State.LOADING: "LOADING", State.AVAILABLE: "READY",
                State.UNLOADING: "UNLOADING", State.END: "UNAVAILABLE"}


class ModelControl:
    def __init__(self, mode: str, manager: ModelManager, configure: Callable[[list[ModelSpec]], list[ModelSpec]]):
        if mode not in MODES:
            raise ValueError(f"--model_control_mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.manager = mode, manager
        self.configure = configure  # the server-wide device and framework options, applied to a spec
        #: The models this server knows by name (the repository): the config's, and those loaded by path
        #: while they are loaded (a server that loads many by path keeps none it unloaded).
        self.repository: dict[str, ModelSpec] = {}
        self.configured: set[str] = set()  # the config's names, which stay in the repository
        self.load_timeout_s = 90.0  # how long an HTTP load request waits for its answer
        #: Under a supervisor: does the same load / unload in the sibling workers (set by the server).
        self.siblings: Callable[[str, Any], Awaitable[Any]] | None = None
        self.changed: Callable[[], None] | None = None  # called after each load / unload in every worker
        #: Where a path a load request names may be (set by the server from --model_load_roots).
        self.roots = LoadRoots(())

    @classmethod
    def from_settings(cls, s: Settings, manager: ModelManager) -> ModelControl:
        # ModelMesh loads and unloads: its runtime port implies explicit model control.
        control = cls("explicit" if s.modelmesh_port else s.model_control_mode, manager,
                      lambda specs: with_runtime(specs, s))
        control.load_timeout_s = s.model_loading_timeout_ms / 1000
        return control

    @property
    def explicit(self) -> bool:
        return self.mode == "explicit"

    def startup(self, specs: list[ModelSpec], load_model: str, pin_model: str = "") -> list[ModelSpec]:
        """Remember the configured models; the ones to load at start (all but in explicit mode: the named and
        the pinned ones; lazy mode knows them all and loads the pinned ones)."""
        self.repository = {s.name: s for s in specs}
        self.configured = set(self.repository)
        unknown = [n for n in names_of(pin_model) if n not in self.repository]
        if unknown:
            raise ConfigError(f"--pin_model: no model {', '.join(unknown)} in the configuration "
                              f"(known: {', '.join(sorted(self.repository)) or 'none'})")
        names = names_of(load_model)
        if not self.explicit:
            if names:
                raise ConfigError("--load_model needs --model_control_mode=explicit")
            return specs
        if "*" in names:
            if len(names) > 1:
                raise ConfigError("--load_model=* loads every model: name no other model with it")
            return specs
        unknown = [n for n in names if n not in self.repository]
        if unknown:
            raise ConfigError(f"--load_model: no model {', '.join(unknown)} in the configuration "
                             f"(known: {', '.join(sorted(self.repository)) or 'none'})")
        return [s for s in specs if s.name in names or s.pinned]

    def replace(self, specs: list[ModelSpec]) -> None:
        """A reload (config poll, ReloadConfigRequest) names the repository anew."""
        self.repository = {s.name: s for s in specs}
        self.configured = set(self.repository)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model known or loaded, a row per version it has, a row without
        a version for a model that has none loaded (`UNAVAILABLE`, with why)."""
        rows: list[dict[str, str]] = []
        for name in sorted({*self.repository, *self.manager.models, *self.manager.failures}):
            model = self.manager.models.get(name)
            versions = sorted(model.versions.values(), key=lambda s: s.version) if model is not None else []
            for status in versions:
                row = {"name": name, "version": str(status.version), "state": INDEX_STATES[status.state]}
                if status.error is not None:
                    row["reason"] = status.error.message
                elif status.state is State.END:
                    row["reason"] = "unloaded"
                rows.append(row)
            if not versions:
                failure = self.manager.failures.get(name)
                known = self.manager.lazy and model is not None
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": failure.message if failure is not None
                             else "not loaded" if known else "unloaded"})
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    def _allowed(self, verb: str) -> None:
        if self.mode not in ("explicit", "lazy"):
            raise ServingError(Code.FAILED_PRECONDITION,
                               f"explicit model {verb} is not allowed with --model_control_mode={self.mode}; "
                               f"start the server with --model_control_mode=explicit")

    async def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) `name` as the repository knows it, or from the `path` / `config` parameters;
        under a supervisor, in every worker."""
        if not name:
            raise invalid_argument("a model name is needed")
        checked_name(name)  # a name that comes into the metrics, logs and headers
        await self.load_spec(self.spec_for(name, parameters or {}))

    async def load_spec(self, spec: ModelSpec) -> None:
        """Load (or reload) the model `spec` describes, in every worker."""
        self._allowed("load")
        await self._everywhere("load", spec)

    async def unload(self, name: str, *, known_only: bool = True) -> None:
        """Unload `name` (in every worker): requests in flight finish first. An unknown name is NOT_FOUND
        when `known_only`, else nothing."""
        self._allowed("unload")
        unloaded = await self._everywhere("unload", name)
        if not unloaded and known_only and name not in self.repository:
            raise not_found(f"failed to unload '{name}': no such model")

    async def _everywhere(self, verb: str, arg: Any) -> bool:
        here = self.apply(verb, arg)
        if self.siblings is None:
            return await here
        try:
            outcomes: tuple[Any, ...] = await asyncio.gather(here, self.siblings(verb, arg), return_exceptions=True)
        finally:
            if self.changed is not None:
                self.changed()
        done = outcomes[0]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(done, bool)
        return done

    async def apply(self, verb: str, arg: Any) -> bool:
        """This process's part of a load (`arg` a ModelSpec) or an unload (`arg` a name); an unload says
        whether the model was loaded."""
        if verb == "load":
            await self.manager.load_model(arg)
            self.repository.setdefault(arg.name, arg)
            return True
        unloaded = await self.manager.unload_model(arg, keep=self.mode == "lazy" and arg in self.configured)
        if arg not in self.configured:
            self.repository.pop(arg, None)
        return unloaded

    def spec_for(self, name: str, parameters: Mapping[str, Any]) -> ModelSpec:
        """The spec a load request means: the repository's, with its parameters over it."""
        unknown = sorted(k for k in parameters if k.startswith("file:"))
        if unknown:
            raise invalid_argument("loading a model from files sent in the request (file: parameters) is not "
                                   "supported; put the files where the server reads them and pass their \"path\"")
        config: dict[str, Any] = {}
        if "config" in parameters:
            text = parameters["config"]
            try:
                config = orjson.loads(text)
            except (orjson.JSONDecodeError, TypeError) as e:
                raise invalid_argument(f"the load parameter config is not JSON: {e}") from None
            if not isinstance(config, dict):
                raise invalid_argument("the load parameter config must be a JSON object")
        path = parameters.get("path") or config.get("base_path")
        spec = self.repository.get(name)
        if spec is None:
            if not path:
                raise not_found(f"failed to load '{name}': it is not in the model repository and the request "
                                f"gives no \"path\"")
            spec = self.configure([ModelSpec(name=name, base_path="/", flat=True)])[0]
        changes: dict[str, Any] = {}
        if path:
            if not isinstance(path, str):
                raise invalid_argument(f"the model path must be a string, got {orjson.dumps(path).decode()}")
            changes["base_path"] = self.roots.check(path)
        platform = config.get("platform") or config.get("backend")
        if platform:
            changes["platform"] = str(platform)
        if "version_policy" in config:
            changes["policy"] = policy_from_json(config["version_policy"])
        return dataclasses.replace(spec, **changes) if changes else spec


class ConfigPolls:
    """--model_control_mode=poll: new versions under the base paths (`files`) and changes of the model
    config file (`config`), each a task that runs for ever and never stops on a failure."""

    def __init__(self, manager: ModelManager, current: Callable[[], list[ModelSpec]],
                 accept: Callable[[list[ModelSpec]], list[ModelSpec]], after: Callable[[], Awaitable[None]]) -> None:
        self.manager, self.current, self.accept, self.after = manager, current, accept, after

    async def files(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.manager.poll()
                await self.after()
            except Exception:  # noqa: BLE001 - polling must go on
                log.exception("file system poll failed")

    async def config(self, path: str, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                specs = read_model_config_file(path)
            except ConfigError as e:
                log.error("model config file not applied, still serving the previous one: %s", e)
                continue
            before = self.current()
            if self.accept(specs) == before:
                continue
            log.info("model config file changed: applying it")
            started = time.monotonic()
            try:
                await self.manager.apply(self.current())
            except ConfigError as e:
                log.error("model config applied in part: %s", e)
            log.info("model config file applied in %.2f s", time.monotonic() - started)
            await self.after()


def policy_from_json(doc: Any) -> VersionPolicy:
    """Triton's `version_policy` JSON: {"latest": {"num_versions": n}}, {"all": {}}, {"specific":
    {"versions": [...]}}."""
    if isinstance(doc, dict) and len(doc) == 1:
        kind, body = next(iter(doc.items()))
        body = body or {}
        try:
            if kind == "all":
                return VersionPolicy("all")
            if kind == "latest":
                return VersionPolicy("latest", num_versions=int(body.get("num_versions", 1)))
            if kind == "specific" and body.get("versions"):
                return VersionPolicy("specific", versions=frozenset(int(v) for v in body["versions"]))
        except (TypeError, ValueError, AttributeError):
            pass
    raise invalid_argument(f"version_policy: expected {{\"latest\": {{\"num_versions\": N}}}}, {{\"all\": {{}}}} "
                           f"or {{\"specific\": {{\"versions\": [...]}}}}, got {orjson.dumps(doc).decode()}")


def load_roots(settings: Settings, specs: list[ModelSpec]) -> LoadRoots:
    """Where a path a load request names may be: the configured base paths (the operator's), the model cache
    dir, ModelMesh's model dir when it is on, and --model_load_roots."""
    roots = [s.base_path for s in specs] + [settings.model_cache_dir or default_cache_dir()]
    if settings.modelmesh_port:
        roots.append(MODELMESH_MODEL_DIR)
    return LoadRoots([*roots, *settings.model_load_roots.split(",")])
