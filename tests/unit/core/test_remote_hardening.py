"""Remote base paths under failure and abuse: a fetch that fails is tried again with an exponential back-off
(a stepped clock, no sleeps), logged once as an ERROR and then at most once a minute, and counted; a fetch
that succeeds ends the back-off, a changed base path or config is tried at once. Archives (tar and zip,
made here) of more entries than --model_archive_max_files are refused before anything is unpacked.
The same over a real HTTP server: tests/e2e/test_remote_models.py."""

import asyncio
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.core.model_config import ModelSpec, VersionPolicy
from serving.core.remote import MAX_FILES, FetchBackoff, ModelFetcher
from serving.core.repository import ModelManager, State
from serving.errors import Code, ServingError
from serving.ops.metrics import Metrics
from serving.settings import Settings
from tests.helpers import make_linear

URL = "http://models.invalid/lin.tar.gz#sha256=" + "0" * 64


class Clock:
    """A monotonic clock the test steps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Flaky(ModelFetcher):
    """A fetcher that fails while `failing`, else hands back `folder`; it notes the clock at each call."""

    def __init__(self, clock, folder):
        super().__init__(cache_dir=str(folder.parent / "cache"))
        self.clock, self.folder, self.failing, self.calls = clock, folder, True, []

    def local(self, base_path):
        self.calls.append((base_path, self.clock()))
        if self.failing:
            raise ServingError(Code.FAILED_PRECONDITION, f"the sha256 of {base_path} is not the one its URL says")
        return str(self.folder)


def spec(base, name="m"):
    return ModelSpec(name=name, base_path=base, platform="linear", policy=VersionPolicy())


def records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "serving.core.repository" and r.levelno == level]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fetcher(clock, tmp_path):
    make_linear(tmp_path / "model", 1)
    return Flaky(clock, tmp_path / "model")


def test_a_failed_fetch_backs_off_to_five_minutes_with_one_error_then_a_line_a_minute(clock, fetcher, caplog):
    async def go():
        m = ModelManager(fetcher=fetcher, fetch_backoff=FetchBackoff(clock))
        await m.apply([spec(URL)])
        for _ in range(15 * 60):  # a poll a second for 15 minutes
            clock.now += 1
            await m.poll()
        status = m.status("m")[0]
        assert status.state is State.END and "sha256" in status.error.message
        scraped = Metrics(m).render().decode()
        await m.shutdown()
        return scraped

    with caplog.at_level(logging.INFO, logger="serving.core.repository"):
        scraped = asyncio.run(go())
    times = [t for _, t in fetcher.calls]
    assert times == [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 811]  # doubling, then every 300 s
    (error,) = records(caplog, logging.ERROR)
    assert "sha256" in error and "after 1 s" in error
    warnings = records(caplog, logging.WARNING)
    # At 63 s (a minute after the ERROR), then every attempt, each more than a minute after the last.
    assert len(warnings) == 5
    assert "7 times in a row (6 since the last line)" in warnings[0] and "next try after 64 s" in warnings[0]
    assert "11 times in a row (1 since the last line)" in warnings[-1] and "after 300 s" in warnings[-1]
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    (sample,) = families["serving_model_fetch_failures"].samples
    assert (sample.name, sample.labels, sample.value) == ("serving_model_fetch_failures_total", {"model": "m"}, 11)


def test_a_fetch_that_succeeds_ends_the_back_off(clock, fetcher, caplog):
    base = "s3://models/lin"  # a prefix: fetched on every poll, also once it serves

    async def go():
        m = ModelManager(fetcher=fetcher, fetch_backoff=FetchBackoff(clock))
        await m.apply([spec(base)])  # fails at 0
        clock.now = 1
        await m.poll()  # fails again: next at 3
        clock.now = 2
        await m.poll()  # waits
        clock.now, fetcher.failing = 3, False
        await m.poll()
        assert m.get("m").version == 1
        clock.now, fetcher.failing = 4, True
        await m.poll()  # a first failure again: an ERROR, the next try 1 s later, the model serving meanwhile
        clock.now = 4.5
        await m.poll()
        clock.now = 5
        await m.poll()
        assert m.get("m").version == 1
        await m.shutdown()

    with caplog.at_level(logging.INFO, logger="serving.core.repository"):
        asyncio.run(go())
    assert [t for _, t in fetcher.calls] == [0, 1, 3, 4, 5]
    assert any("fetched s3://models/lin after 2 failed attempts" in r for r in records(caplog, logging.INFO))
    assert len(records(caplog, logging.ERROR)) == 2 and not records(caplog, logging.WARNING)


def test_a_changed_base_path_or_a_reload_is_fetched_at_once(clock, fetcher, caplog):
    other = "http://models.invalid/other.tar.gz"

    async def go():
        m = ModelManager(fetcher=fetcher, fetch_backoff=FetchBackoff(clock))
        await m.apply([spec(URL)])
        clock.now = 0.5
        await m.poll()  # backing off: not fetched
        await m.apply([spec(other)])  # a new base path: at once
        await m.apply([spec(other)])  # a reload of the same config: at once too
        await m.poll()  # and the back-off holds again
        clock.now, fetcher.failing = 1.5, False
        await m.poll()
        assert m.get("m").version == 1
        await m.shutdown()

    with caplog.at_level(logging.INFO, logger="serving.core.repository"):
        asyncio.run(go())
    assert fetcher.calls == [(URL, 0), (other, 0.5), (other, 0.5), (other, 1.5)]
    assert len(records(caplog, logging.ERROR)) == 3  # each attempt asked for is reported


def entries(n):
    """`n` tiny files, ten to a folder (the archives hold no entries of their own for the folders)."""
    return [(f"1/d{i // 10}/f{i}.txt", b"x") for i in range(n)]


def make_archive(path, files):
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files:
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_an_archive_of_more_entries_than_the_limit_is_refused_before_unpacking(tmp_path, suffix):
    fetcher = ModelFetcher(cache_dir=str(tmp_path / "cache"), max_files=10)
    over = make_archive(tmp_path / f"over{suffix}", entries(11))
    with pytest.raises(ServingError) as e:
        fetcher.local(str(over))
    assert e.value.code is Code.FAILED_PRECONDITION
    assert e.value.message == (f"the archive {over} holds more than 10 files and folders, the limit of "
                               f"--model_archive_max_files")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing unpacked
    at = make_archive(tmp_path / f"at{suffix}", entries(10))  # at the limit: unpacked
    assert sorted(p.name for p in Path(fetcher.local(str(at))).rglob("*.txt")) == sorted(f"f{i}.txt" for i in range(10))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_the_default_limit_refuses_an_archive_of_10001_files(tmp_path, suffix):
    assert Settings().model_archive_max_files == MAX_FILES == 10_000
    bomb = make_archive(tmp_path / f"bomb{suffix}", entries(10_001))
    with pytest.raises(ServingError) as e:
        ModelFetcher(cache_dir=str(tmp_path / "cache")).local(str(bomb))
    assert "more than 10000 files and folders, the limit of --model_archive_max_files" in e.value.message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_an_object_store_prefix_of_more_files_than_the_limit_is_refused(tmp_path, monkeypatch):
    class Store:
        """The two calls a prefix's mirror makes of an fsspec file system."""

        def info(self, key):
            raise FileNotFoundError(key)

        def find(self, key, detail):
            return {f"{key}/1/f{i}": {"type": "file", "size": 1, "ETag": str(i)} for i in range(4)}

        def get_file(self, path, local):
            raise AssertionError("nothing is downloaded")

    fetcher = ModelFetcher(cache_dir=str(tmp_path / "cache"), max_files=3)
    monkeypatch.setattr(fetcher, "store", lambda scheme: Store())
    with pytest.raises(ServingError) as e:
        fetcher.local("s3://models/many")
    assert e.value.message == "s3://models/many holds more than 3 files, the limit of --model_archive_max_files"
