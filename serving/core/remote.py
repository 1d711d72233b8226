"""Models from URLs, archives and object storage: a base path may be an `http(s)://` URL of an archive
(`.tar.gz`, `.tgz`, `.tar`, `.zip`) or of a single model file, a local archive, an `s3://bucket/prefix`
(fsspec + s3fs, the `s3` extra; the endpoint from --s3_endpoint_url or the standard AWS variables) or a
`gs://bucket/prefix` (gcsfs, the `gcs` extra; the endpoint from --gcs_endpoint_url or STORAGE_EMULATOR_HOST,
credentials Google's defaults), whose version folders are mirrored and polled as a local base path's are. It
is downloaded into --model_cache_dir, checked (the size the server announced; the sha256 when the URL ends in
`#sha256=<hex>`), unpacked safely (no absolute paths, no `..`, no links, devices or other special files, at
most --model_archive_max_bytes unpacked and --model_archive_max_files entries) and read as a local base path
is: version folders `1/`, `2/`, ..., or the model files directly (version 1). A URL fetched before is asked
again with its ETag / Last-Modified and reused when unchanged (304), or when the server cannot be reached and a
copy is there. A fetch that failed is tried again on the polls after a back-off (`FetchBackoff`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Code, ServingError
from ..redact import redact
from ..settings import MAX_BYTES, MAX_FILES, Settings

log = logging.getLogger(__name__)

ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK = 1 << 20
#: The object stores a base path may name, and the extra each needs.
STORES = ("s3://", "gs://")
EXTRAS = {"s3": "s3", "gs": "gcs"}
#: What a base path that is fetched rather than read in place starts with.
URL_PREFIXES = ("http://", "https://", *STORES)
#: A failed fetch is tried again after FIRST_RETRY_S, twice as long after each failure in a row, at most
#: MAX_RETRY_S; its first failure is logged as an ERROR, the next ones at most once a REPORT_EVERY_S.
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 300.0
REPORT_EVERY_S = 60.0


def is_remote(base_path: str) -> bool:
    """Whether a base path is fetched (a URL, an object store prefix) or unpacked (a local archive) rather
    than read in place."""
    return base_path.startswith(URL_PREFIXES) or base_path.lower().endswith(ARCHIVES)


def is_polled(base_path: str) -> bool:
    """Whether a remote base path is looked at again on every file-system poll (an object store prefix of
    version folders, as a local base path is), rather than only when the config names it."""
    return base_path.startswith(STORES) and not base_path.lower().endswith(ARCHIVES)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "serving-engine",
                        "models")


def _etag(info: dict[str, Any]) -> str:
    """An object's ETag as its store lists it (S3 `ETag`, GCS `etag`)."""
    return str(info.get("ETag") or info.get("etag") or "")


def _failed(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, redact(message))  # a URL's credentials never in an answer


@dataclass
class FailingFetch:
    """The failures in a row of one base path's fetch (one model's), as `FetchBackoff` counts them."""

    base_path: str
    attempts: int = 0  # failed attempts in a row, the last one included
    delay: float = 0.0  # seconds from the last failure to the next attempt
    retry_at: float = 0.0  # the clock's time of the next attempt
    reported_at: float = 0.0  # the clock's time of the last line logged
    unreported: int = 0  # failures a line for the last one covers: since the line before, this one included
    report: bool = True  # whether the last failure is to be logged (the first always is)


class FetchBackoff:
    """When a base path whose fetch failed is fetched again, and which failures are worth a log line: the
    next attempt `first_s` after the first failure, twice as long after each next one, at most `max_s`; a
    line for the first failure, then at most one a `report_every_s`. The clock is injected (tests step it).
    The state of each model is a `FailingFetch` its caller keeps; a fetch that succeeds drops it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, first_s: float = FIRST_RETRY_S,
                 max_s: float = MAX_RETRY_S, report_every_s: float = REPORT_EVERY_S) -> None:
        self.clock, self.first_s, self.max_s, self.report_every_s = clock, first_s, max_s, report_every_s

    def due(self, failing: FailingFetch | None, base_path: str) -> bool:
        """Whether to fetch now: nothing failed, the base path changed since, or the back-off is over."""
        return failing is None or failing.base_path != base_path or self.clock() >= failing.retry_at

    def failed(self, failing: FailingFetch | None, base_path: str) -> FailingFetch:
        """The failures in a row with one more (a first one for a new base path)."""
        now = self.clock()
        if failing is None or failing.base_path != base_path:
            failing = FailingFetch(base_path)
        failing.attempts += 1
        failing.unreported = 1 if failing.report else failing.unreported + 1  # counted from the last line
        failing.delay = min(failing.delay * 2 or self.first_s, self.max_s)
        failing.retry_at = now + failing.delay
        failing.report = failing.attempts == 1 or now - failing.reported_at >= self.report_every_s
        if failing.report:
            failing.reported_at = now
        return failing


class ModelFetcher:
    """Turns a remote base path into a local folder under the cache (one folder per URL)."""

    @classmethod
    def from_settings(cls, s: Settings) -> ModelFetcher:
        return cls(s.model_cache_dir, s.model_archive_max_bytes, s.s3_endpoint_url, s.gcs_endpoint_url,
                   s.model_archive_max_files)

    def __init__(self, cache_dir: str = "", max_bytes: int = MAX_BYTES, s3_endpoint_url: str = "",
                 gcs_endpoint_url: str = "", max_files: int = MAX_FILES) -> None:
        self.cache_dir, self.max_bytes, self.max_files = Path(cache_dir or default_cache_dir()), max_bytes, max_files
        self.s3_endpoint_url = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL", "")
        self.gcs_endpoint_url = gcs_endpoint_url
        self._stores: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def local(self, base_path: str) -> str:
        """The local folder holding what `base_path` holds; a ServingError says why there is none. Two
        models of one URL (the load threads) fetch it in turn."""
        url = base_path.partition("#")[0]
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:
            return self._local(base_path)

    def _local(self, base_path: str) -> str:
        url, _, fragment = base_path.partition("#")
        sha256 = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
        folder = self.cache_dir / hashlib.sha256(url.encode()).hexdigest()[:24]
        if url.startswith(STORES):
            return self._store_checked(url, folder, sha256)
        if not url.startswith(("http://", "https://")):
            return self._from_archive(url, folder, sha256)
        return self._from_url(url, folder, sha256)

    def _from_archive(self, url: str, folder: Path, sha256: str | None) -> str:
        """A local archive, unpacked again only when its size or modification time changed."""
        unpacked = folder / "model"
        archive = Path(url)
        if not archive.is_file():
            raise _failed(f"the model archive {url} does not exist")
        st = archive.stat()
        stamp: dict[str, Any] = {"size": st.st_size, "mtime": st.st_mtime}
        if self._current(folder, stamp):
            return str(unpacked)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._verify(archive, None, sha256, url)
            self._unpack_into(folder, archive, url, stamp)
        except OSError as e:
            raise _failed(f"cannot unpack {url}: {e}") from None
        return str(unpacked)

    def _from_url(self, url: str, folder: Path, sha256: str | None) -> str:
        """An http(s) URL: downloaded and unpacked, or the copy we have when the server says it is unchanged
        (304) or cannot be reached."""
        unpacked = folder / "model"
        meta = self._meta(folder)
        request = urllib.request.Request(url)
        if meta is not None and unpacked.is_dir() and meta.get("sha256_asked") == sha256:
            if meta.get("etag"):
                request.add_header("If-None-Match", str(meta["etag"]))
            if meta.get("last_modified"):
                request.add_header("If-Modified-Since", str(meta["last_modified"]))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as answer:
                self._download_into(folder, answer, url, sha256)
        except urllib.error.HTTPError as e:
            if e.code == 304 and unpacked.is_dir():
                return str(unpacked)  # unchanged since the copy we have
            raise _failed(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            if unpacked.is_dir() and meta is not None and meta.get("sha256_asked") == sha256:
                log.warning("cannot reach %s (%s): serving the copy downloaded before", redact(url), e)
                return str(unpacked)
            raise _failed(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
        return str(unpacked)

    def _download_into(self, folder: Path, answer: Any, url: str, sha256: str | None) -> None:
        """Save a URL's answer next to `folder/model`, check it, and unpack it there."""
        download = Path(tempfile.mkstemp(dir=folder, suffix=".part")[1])
        try:
            expected = answer.headers.get("Content-Length")
            self._save(answer, download)
            self._verify(download, int(expected) if expected else None, sha256, url)
            name = os.path.basename(urllib.parse.urlsplit(url).path) or "model"
            stamp: dict[str, Any] = {"etag": answer.headers.get("ETag"),
                                     "last_modified": answer.headers.get("Last-Modified"), "sha256_asked": sha256,
                                     "url": url}
            self._unpack_into(folder, download, name, stamp)
        finally:
            download.unlink(missing_ok=True)

    def _store_checked(self, url: str, folder: Path, sha256: str | None) -> str:
        try:
            return self._from_store(url, folder, sha256)
        except ServingError:
            raise
        except Exception as e:  # noqa: BLE001 - the stores' client errors are many: the message says which
            raise _failed(f"cannot fetch {url}: {type(e).__name__}: {e}") from None

    def store(self, scheme: str) -> Any:
        """The fsspec file system of `s3` or `gs`, made once. No listing cache: a poll must see the version
        folders as they are now."""
        if scheme not in self._stores:
            try:
                if scheme == "s3":
                    import s3fs

                    kwargs = {"endpoint_url": self.s3_endpoint_url} if self.s3_endpoint_url else {}
                    fs: Any = s3fs.S3FileSystem(client_kwargs=kwargs, use_listings_cache=False,
                                                skip_instance_cache=True)
                else:  # gcsfs's plain JSON-API file system (its default class probes buckets over gRPC first)
                    from gcsfs.core import GCSFileSystem

                    endpoint = {"endpoint_url": self.gcs_endpoint_url, "token": "anon"} if self.gcs_endpoint_url else {}
                    fs = GCSFileSystem(use_listings_cache=False, skip_instance_cache=True, **endpoint)
            except ImportError:
                extra = EXTRAS[scheme]
                raise _failed(f"{scheme}:// base paths need the {extra} extra: pip install serving-engine[{extra}]"
                              ) from None
            self._stores[scheme] = fs
        return self._stores[scheme]

    def _from_store(self, url: str, folder: Path, sha256: str | None) -> str:
        """An archive or model file key: downloaded and unpacked as a URL's. A prefix: mirrored file by file
        (new and changed keys downloaded, removed ones deleted), so new versions appear and old ones go."""
        scheme, _, key = url.partition("://")
        fs, key = self.store(scheme), key.rstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            info = fs.info(key)  # one request tells a file key from a prefix (polled every few seconds)
        except FileNotFoundError:
            info = {}  # no such key: a prefix, or nothing at all (said below)
        if key.lower().endswith(ARCHIVES) or info.get("type") == "file":
            return self._store_file(fs, key, info, url, folder, sha256)
        return self._mirror(fs, key, url, folder)

    def _store_file(self, fs: Any, key: str, info: dict[str, Any], url: str, folder: Path,
                    sha256: str | None) -> str:
        """An archive or model file key, downloaded and unpacked unless its ETag and size are those of the copy
        we have."""
        unpacked = folder / "model"
        stamp = {"etag": _etag(info), "size": info.get("size"), "sha256_asked": sha256, "url": url}
        if self._current(folder, stamp):
            return str(unpacked)
        download = Path(tempfile.mkstemp(dir=folder, suffix=".part")[1])
        try:
            if (info.get("size") or 0) > self.max_bytes:
                raise _failed(f"{url} is larger than --model_archive_max_bytes ({self.max_bytes})")
            fs.get_file(key, str(download))
            self._verify(download, info.get("size"), sha256, url)
            self._unpack_into(folder, download, os.path.basename(key), stamp)
        finally:
            download.unlink(missing_ok=True)
        return str(unpacked)

    def _mirror(self, fs: Any, key: str, url: str, folder: Path) -> str:
        """A prefix mirrored into `folder/model`: new and changed keys downloaded, removed ones deleted."""
        listing = self._listing(fs, key, url)
        unpacked = folder / "model"
        mirrored = (self._meta(folder) or {}).get("files", {})
        files: dict[str, list[Any]] = {}
        for path, info in sorted(listing.items()):
            relative = path[len(key):].lstrip("/")
            _check_name(relative, url)
            tag = [_etag(info), info.get("size")]
            files[relative] = tag
            target = unpacked / relative
            if mirrored.get(relative) == tag and target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            fs.get_file(path, str(part))
            os.replace(part, target)
        for relative in set(mirrored) - set(files):  # gone from the store: gone here
            (unpacked / relative).unlink(missing_ok=True)
        for directory in sorted((p for p in unpacked.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(directory.iterdir()):
                directory.rmdir()
        (folder / "meta.json").write_text(json.dumps({"url": url, "files": files}))
        return str(unpacked)

    def _listing(self, fs: Any, key: str, url: str) -> dict[str, dict[str, Any]]:
        """The files under a prefix (path -> the store's info), within --model_archive_max_bytes and
        --model_archive_max_files."""
        listing = {path: info for path, info in fs.find(key, detail=True).items() if info.get("type") != "directory"}
        if not listing:
            raise _failed(f"nothing under {url}")
        if sum(info.get("size") or 0 for info in listing.values()) > self.max_bytes:
            raise _failed(f"{url} holds more than --model_archive_max_bytes ({self.max_bytes})")
        if len(listing) > self.max_files:
            raise _failed(f"{url} holds more than {self.max_files} files, the limit of --model_archive_max_files")
        return listing

    def _save(self, answer: object, path: Path) -> None:
        size = 0
        with path.open("wb") as out:
            while chunk := answer.read(CHUNK):  # type: ignore[attr-defined]
                size += len(chunk)
                if size > self.max_bytes:
                    raise _failed(f"the download is larger than --model_archive_max_bytes ({self.max_bytes})")
                out.write(chunk)

    @staticmethod
    def _verify(path: Path, expected_size: int | None, sha256: str | None, url: str) -> None:
        size = path.stat().st_size
        if expected_size is not None and size != expected_size:
            raise _failed(f"the download of {url} is {size} bytes, the server announced {expected_size}")
        if sha256 is not None:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise _failed(f"the sha256 of {url} is {digest.hexdigest()}, not {sha256} as its URL says")

    def _unpack_into(self, folder: Path, source: Path, name: str, stamp: dict[str, Any]) -> None:
        """Unpack (or, a single file, copy) `source` into `folder/model`, replacing what was there only
        once the new content is complete."""
        staging = Path(tempfile.mkdtemp(dir=folder, prefix="unpacking-"))
        try:
            lower = name.lower()
            if lower.endswith((".tar.gz", ".tgz", ".tar")):
                self._untar(source, staging, name)
            elif lower.endswith(".zip"):
                self._unzip(source, staging, name)
            else:  # one model file: the version 1 of a flat base path
                shutil.copyfile(source, staging / name)
            target = folder / "model"
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            (folder / "meta.json").write_text(json.dumps(stamp))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _untar(self, source: Path, into: Path, name: str) -> None:
        try:
            with tarfile.open(source) as tar:
                members: list[tarfile.TarInfo] = []

                def headers() -> Iterator[tuple[str, int, bool]]:  # one at a time: past a limit, no more is read
                    for m in tar:
                        members.append(m)
                        yield m.name, m.size, not (m.isfile() or m.isdir())

                self._check_members(headers(), name)
                tar.extractall(into, members=members, filter="data")
        except tarfile.TarError as e:
            raise _failed(f"the archive {name} cannot be read: {e}") from None

    def _unzip(self, source: Path, into: Path, name: str) -> None:
        try:
            with zipfile.ZipFile(source) as archive:
                self._check_members(((i.filename, i.file_size, (i.external_attr >> 16) & 0o170000 == 0o120000)
                                     for i in archive.infolist()), name)
                archive.extractall(into)
        except zipfile.BadZipFile as e:
            raise _failed(f"the archive {name} cannot be read: {e}") from None

    def _check_members(self, members: Iterable[tuple[str, int, bool]], name: str) -> None:
        """Every (name, size, is a link or special file) of an archive stays in its folder, is a plain file
        or folder, and all of them fit in --model_archive_max_bytes and --model_archive_max_files. Called
        before anything is unpacked."""
        total = 0
        for count, (member, size, special) in enumerate(members, 1):
            if count > self.max_files:
                raise _failed(f"the archive {name} holds more than {self.max_files} files and folders, the limit "
                              f"of --model_archive_max_files")
            _check_name(member, name)
            if special:
                raise _failed(f"the archive {name} holds {member}, which is a link or a special file")
            total += size
            if total > self.max_bytes:
                raise _failed(f"the archive {name} unpacks to more than --model_archive_max_bytes ({self.max_bytes})")

    def _current(self, folder: Path, stamp: dict[str, Any]) -> bool:
        return self._meta(folder) == stamp and (folder / "model").is_dir()

    @staticmethod
    def _meta(folder: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None


def _check_name(member: str, archive: str) -> None:
    parts = Path(member).parts
    if member.startswith(("/", "\\")) or os.path.isabs(member) or ".." in parts:
        raise _failed(f"the archive {archive} holds {member}, a path leaving its folder")
