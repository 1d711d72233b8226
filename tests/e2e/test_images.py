"""The container images' HEALTHCHECK command (read from Dockerfile.cpu and Dockerfile.gpu as text, as in
tests/unit/test_images.py) tells a live server from a dead one. No Docker engine is needed."""

import json
import re
import subprocess
import sys

from tests.helpers import Server, make_xgb
from tests.unit.test_images import IMAGES, args_of


def healthcheck(image: str, port: int) -> list[str]:
    """The image's HEALTHCHECK command, pointed at `port` and run with this interpreter."""
    (args,) = args_of(image, "HEALTHCHECK")
    command = re.sub(r"^(--\S+\s+)*CMD\s+", "", args)
    argv = [word.replace("127.0.0.1:8080/healthz", f"127.0.0.1:{port}/healthz") for word in json.loads(command)]
    assert argv[0] == "python" and "/healthz" in argv[-1], f"{image}: HEALTHCHECK is {argv}"
    return [sys.executable, *argv[1:]]


def test_the_healthcheck_passes_on_a_live_server_and_fails_on_a_dead_one(tmp_path):
    make_xgb(tmp_path / "model", 1)
    # The images' own environment, but for the base path: this machine has no /models.
    with Server(env={"MODEL_NAME": "model", "MODEL_BASE_PATH": str(tmp_path)}) as s:
        commands = [healthcheck(image, s.port) for image in IMAGES]
        for command in commands:
            assert subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    for command in commands:
        failed = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert failed.returncode == 1 and "Connection refused" in failed.stderr
