"""Models from URLs and archives: a real HTTP server on localhost serving a tar.gz of version folders, a
zip, one model file; a local archive; the sha256 a URL names; archives that try to leave their folder or
hold too many files; the cache reused when the server says the file has not changed (304) or cannot be
reached; a failed download tried again with a back-off, not on every poll."""

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import time
import zipfile

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Server, make_linear, make_xgb, pbtxt, wait_until


class Files:
    """A ThreadingHTTPServer serving a folder (If-Modified-Since answered 304), counting the answers."""

    def __init__(self, root):
        self.codes = []
        files = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                files.codes.append(int(code))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "www").mkdir()
    f = Files(tmp_path / "www")
    yield f
    f.close()


def both_available(server):
    def states():
        status, body = server.get("/v1/models/m")
        return status == 200 and {v["state"] for v in body["model_version_status"]} == {"AVAILABLE"} and len(
            body["model_version_status"]) == 2

    wait_until(states, what="versions 1 and 2 of m AVAILABLE")


def tar_of(folder, archive, extra=None):
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_a_tar_gz_url_of_version_folders_serves_each_version(tmp_path, files):
    make_linear(tmp_path / "src", 1, weights=[1.0], bias=0.0)
    make_linear(tmp_path / "src", 2, weights=[1.0], bias=10.0)
    archive = tar_of(tmp_path / "src", tmp_path / "www" / "lin.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    make_linear(tmp_path / "local", 1)
    config = tmp_path / "models.pbtxt"
    config.write_text(pbtxt(
        {"name": "m", "base_path": f"{files.url}/lin.tar.gz#sha256={digest}", "platform": "linear",
         "policy": "all {}"},
        {"name": "bad", "base_path": f"{files.url}/lin.tar.gz#sha256={'0' * 64}", "platform": "linear"},
        {"name": "local", "base_path": str(tmp_path / "local"), "platform": "linear"}))
    cache = tmp_path / "cache"
    with Server(f"--model_config_file={config}", f"--model_cache_dir={cache}", wait_ready=False) as s:
        both_available(s)
        assert s.post("/v1/models/m/versions/1:predict", {"instances": [[1.0]]})[1]["predictions"] == [1.0]
        assert s.post("/v1/models/m:predict", {"instances": [[1.0]]})[1]["predictions"] == [11.0]
        body = wait_until(lambda: (r := s.get("/v1/models/bad"))[0] == 200 and r[1], what="the failed load")
        assert "sha256" in body["model_version_status"][0]["status"]["error_message"]
        assert s.post("/v1/models/local:predict", {"instances": [[1.0]]})[0] == 200  # the others serve
    assert files.codes.count(200) == 2  # m and bad each downloaded it
    # Again: asked with If-Modified-Since, answered 304, the copy reused.
    with Server(f"--model_config_file={config}", f"--model_cache_dir={cache}", wait_ready=False) as s:
        both_available(s)
    assert 304 in files.codes[2:]
    files.close()  # and with the server gone, the copy serves
    with Server(f"--model_config_file={config}", f"--model_cache_dir={cache}", wait_ready=False) as s:
        both_available(s)
        assert "serving the copy downloaded before" in s.output()


def test_a_url_of_one_model_file_and_a_zip_and_a_local_archive(tmp_path, files):
    model = make_xgb(tmp_path / "x", 1, n_features=2)
    (tmp_path / "www" / "model.json").write_bytes(model.read_bytes())
    with zipfile.ZipFile(tmp_path / "www" / "lin.zip", "w") as z:
        z.writestr("1/linear.json", '{"weights": [2.0], "bias": 0.0}')
    make_linear(tmp_path / "src", 3, weights=[3.0], bias=0.0)
    local = tar_of(tmp_path / "src", tmp_path / "local.tgz")
    cache = f"--model_cache_dir={tmp_path / 'cache'}"
    with Server(f"--model_base_path={files.url}/model.json", "--model_name=x", cache) as s:
        status, body = s.get("/v1/models/x")
        assert status == 200 and body["model_version_status"][0]["version"] == "1"
        assert s.post("/v1/models/x:predict", {"instances": [[1.0, 2.0]]})[0] == 200
    with Server(f"--model_base_path={files.url}/lin.zip", "--model_name=z", cache) as s:
        assert s.post("/v1/models/z:predict", {"instances": [[1.0]]})[1]["predictions"] == [2.0]
    with Server(f"--model_base_path={local}", "--model_name=t", cache) as s:
        assert s.post("/v1/models/t/versions/3:predict", {"instances": [[1.0]]})[1]["predictions"] == [3.0]


@pytest.mark.parametrize(("member", "words"), [
    ("../evil.txt", "a path leaving its folder"),
    ("/etc/evil.txt", "a path leaving its folder"),
    ("link", "a link or a special file"),
])
def test_an_archive_leaving_its_folder_is_a_failed_load(tmp_path, files, member, words):
    make_linear(tmp_path / "src", 1)
    archive = tmp_path / "www" / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "1" / "linear.json", arcname="1/linear.json")
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with Server(f"--model_base_path={files.url}/evil.tar.gz", "--model_name=e",
                f"--model_cache_dir={tmp_path / 'cache'}", wait_ready=False) as s:
        body = wait_until(lambda: (r := s.get("/v1/models/e"))[0] == 200 and r[1], what="the failed load")
        assert words in body["model_version_status"][0]["status"]["error_message"], s.output()
        assert s.get("/readyz")[0] == 503 and s.get("/healthz")[0] == 200  # not ready, still serving
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "cache").rglob("evil.txt"))


def test_a_zip_of_more_files_than_the_flag_allows_is_a_failed_load_naming_it(tmp_path, files):
    with zipfile.ZipFile(tmp_path / "www" / "many.zip", "w") as z:
        for i in range(6):
            z.writestr(f"1/f{i}.txt", "x")
    with Server(f"--model_base_path={files.url}/many.zip", "--model_name=z", "--model_archive_max_files=5",
                f"--model_cache_dir={tmp_path / 'cache'}", wait_ready=False) as s:
        body = wait_until(lambda: (r := s.get("/v1/models/z"))[0] == 200 and r[1], what="the failed load")
        message = body["model_version_status"][0]["status"]["error_message"]
        assert message == ("the archive many.zip holds more than 5 files and folders, the limit of "
                           "--model_archive_max_files"), s.output()
    assert not list((tmp_path / "cache").rglob("*.txt"))


def test_a_failed_download_is_tried_again_with_a_back_off_not_on_every_poll(tmp_path, files):
    make_linear(tmp_path / "src", 1)
    tar_of(tmp_path / "src", tmp_path / "www" / "lin.tar.gz")
    with Server(f"--model_base_path={files.url}/lin.tar.gz#sha256={'0' * 64}", "--model_name=m",
                "--file_system_poll_wait_seconds=1", f"--model_cache_dir={tmp_path / 'cache'}",
                wait_ready=False) as s:
        wait_until(lambda: files.codes, what="the first download")
        time.sleep(6)
        downloads = len(files.codes)
        status, text = s.get("/metrics")
        output = s.output()
    # A poll a second would have fetched it 6 or 7 times by now; backing off: at 0, 1 and 3 s (then 7, 15...).
    assert 2 <= downloads <= 4, files.codes
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "sha256" in errors[0], output
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    (sample,) = families["serving_model_fetch_failures"].samples
    assert sample.labels == {"model": "m"} and sample.value == downloads


def test_an_unreachable_url_is_a_failed_load_with_the_reason(tmp_path):
    with Server("--model_base_path=http://127.0.0.1:9/none.tar.gz", "--model_name=n",
                f"--model_cache_dir={tmp_path / 'cache'}", wait_ready=False) as s:
        body = wait_until(lambda: (r := s.get("/v1/models/n"))[0] == 200 and r[1], what="the failed load")
        assert "cannot download" in body["model_version_status"][0]["status"]["error_message"]


def test_an_s3_prefix_of_version_folders_is_mirrored_and_polled(tmp_path):
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")
    pytest.importorskip("s3fs", reason="s3fs (the s3 extra) is not installed")
    import boto3

    from tests.helpers import free_port

    port = free_port()
    store = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    store.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="lin/1/linear.json", Body=b'{"weights": [1.0], "bias": 0.0}')
        with Server("--model_base_path=s3://models/lin", "--model_name=lin",
                    f"--s3_endpoint_url=http://127.0.0.1:{port}", f"--model_cache_dir={tmp_path / 'cache'}",
                    "--file_system_poll_wait_seconds=1", env=env) as s:
            assert s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1]["predictions"] == [2.0]
            s3.put_object(Bucket="models", Key="lin/2/linear.json", Body=b'{"weights": [1.0], "bias": 5.0}')
            wait_until(lambda: s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1].get("predictions")
                       == [7.0], what="version 2 from the store")
            # Version 2 removed from the store: removed from the mirror too, so the latest is 1 again.
            s3.delete_object(Bucket="models", Key="lin/2/linear.json")
            wait_until(lambda: s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1].get("predictions")
                       == [2.0], what="version 1 again, once 2 left the store")
            assert not [p for p in (tmp_path / "cache").rglob("linear.json") if p.parent.name == "2"]
        with Server("--model_base_path=s3://models/nothing-here", "--model_name=n",
                    f"--s3_endpoint_url=http://127.0.0.1:{port}", f"--model_cache_dir={tmp_path / 'cache'}",
                    env=env, wait_ready=False) as s:
            body = wait_until(lambda: (r := s.get("/v1/models/n"))[0] == 200 and r[1], what="the failed load")
            message = body["model_version_status"][0]["status"]["error_message"]
            assert "nothing under s3://models/nothing-here" in message
    finally:
        store.stop()


def test_a_gs_prefix_of_version_folders_is_mirrored_and_polled(tmp_path):
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator (test extra) is missing")
    gcsfs = pytest.importorskip("gcsfs.core", reason="gcsfs (the gcs extra) is not installed")
    from tests.helpers import free_port

    port = free_port()
    store = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    store.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        gs = gcsfs.GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True,
                                 use_listings_cache=False)
        gs.pipe("models/lin/1/linear.json", b'{"weights": [1.0], "bias": 0.0}')
        with tarfile.open(tmp_path / "lin.tar.gz", "w:gz") as tar:
            tar.add(_write(tmp_path / "v" / "3" / "linear.json", '{"weights": [1.0], "bias": 9.0}'), "3/linear.json")
        gs.put_file(str(tmp_path / "lin.tar.gz"), "models/archives/lin.tar.gz")
        flags = (f"--gcs_endpoint_url={endpoint}", f"--model_cache_dir={tmp_path / 'cache'}")
        with Server("--model_base_path=gs://models/lin", "--model_name=lin", *flags,
                    "--file_system_poll_wait_seconds=1") as s:
            assert s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1]["predictions"] == [2.0]
            gs.pipe("models/lin/2/linear.json", b'{"weights": [1.0], "bias": 5.0}')
            wait_until(lambda: s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1].get("predictions")
                       == [7.0], what="version 2 from the store")
            gs.rm("models/lin/2", recursive=True)
            wait_until(lambda: s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1].get("predictions")
                       == [2.0], what="version 1 again, once 2 left the store")
        with Server("--model_base_path=gs://models/archives/lin.tar.gz", "--model_name=lin", *flags) as s:
            assert s.post("/v1/models/lin:predict", {"instances": [[2.0]]})[1]["predictions"] == [11.0]
        with Server("--model_base_path=gs://models/nothing-here", "--model_name=n", *flags, wait_ready=False) as s:
            body = wait_until(lambda: (r := s.get("/v1/models/n"))[0] == 200 and r[1], what="the failed load")
            message = body["model_version_status"][0]["status"]["error_message"]
            assert "nothing under gs://models/nothing-here" in message
    finally:
        store.stop()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_service_json_model_path_may_be_a_url(tmp_path, files):
    import json

    with zipfile.ZipFile(tmp_path / "www" / "svc.zip", "w") as z:
        z.writestr("linear.json", '{"weights": [4.0], "bias": 0.0}')  # the files directly: version 1
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"name": "svc", "processor": "linear", "model_path": f"{files.url}/svc.zip"}))
    with Server(f"--service_config={service}", f"--model_cache_dir={tmp_path / 'cache'}") as s:
        assert s.post("/api/predict/svc", [[1.0]])[1] == [4.0]
