"""Every example in examples/ run as its README says, so the docs cannot drift from the code: each command of the
README's ```sh blocks, in order and as written (the paths under /tmp/models moved to a tmp dir, localhost:8080 and
:9090 to the test server's ports): `python make_model.py`, the `serving` command (a real server on free ports),
then the requests (curl through bash, `python client.py`). Each request's output is compared with the `# -> `
lines under it (the same text, numbers within 1e-3) or, where it varies from run to run, with its `# e.g. ` lines
(the same text, any numbers); a request the README shows without its answer fails. A config file the README
shows (a ```json or ```pbtxt block after a paragraph opening with its /tmp/models path) must equal the one
make_model.py wrote."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, Server

EXAMPLES = ROOT / "examples"
# What each example needs installed: the frameworks of its model, and tritonclient for its client.py.
NEEDS = {
    "xgboost": ["xgboost", "tritonclient.grpc"],
    "lightgbm": ["lightgbm", "tritonclient.grpc"],
    "tensorflow": ["tensorflow", "tritonclient.grpc"],
    "torchscript": ["torch", "tritonclient.grpc"],
    "torch_export": ["torch", "tritonclient.grpc"],
    "onnx": ["torch", "onnx", "onnxruntime", "tritonclient.grpc"],
    "pmml": ["pypmml", "tritonclient.grpc"],
    "async_queue": ["xgboost"],
    "traffic_split": ["xgboost"],
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# A config file shown: a ```json or ```pbtxt block after a paragraph that opens with its path in backquotes.
CONFIG_BLOCK = re.compile(r"^`(/tmp/models/[^`]+)`(?:[^\n]|\n(?!\n))*\n\n```(json|pbtxt)\n(.*?)^```", re.M | re.S)


@dataclasses.dataclass
class Step:
    """One command of a README, with the answer the README gives for it."""

    command: str
    exact: list[str] = dataclasses.field(default_factory=list)  # `# -> ` lines
    example: list[str] = dataclasses.field(default_factory=list)  # `# e.g. ` lines


def readme_steps(readme: str) -> list[Step]:
    steps: list[Step] = []
    for block in re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S):
        command = ""
        for line in block.splitlines():
            if command:  # a command goes on over lines that end in \ and until its quotes close
                command += "\n" + line
            elif line.startswith("# -> "):
                steps[-1].exact.append(line.removeprefix("# -> "))
            elif line.startswith("# e.g. "):
                steps[-1].example.append(line.removeprefix("# e.g. "))
            elif line.strip() and not line.startswith("#"):
                command = line
            if command and complete(command):
                steps.append(Step(command))
                command = ""
        assert not command, f"a command that does not end: {command}"
    return steps


def complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # No closing quotation
        return False
    return not command.endswith("\\")


def split_numbers(text: str) -> tuple[list[str], list[float]]:
    """The text between the numbers (whitespace dropped) and the numbers."""
    return ["".join(part.split()) for part in NUMBER.split(text)], [float(n) for n in NUMBER.findall(text)]


def same_answer(got: str, want: str, any_numbers: bool = False) -> bool:
    (got_text, got_numbers), (want_text, want_numbers) = split_numbers(got), split_numbers(want)
    return got_text == want_text and len(got_numbers) == len(want_numbers) and (any_numbers or all(
        math.isclose(g, w, rel_tol=1e-3, abs_tol=1e-5) for g, w in zip(got_numbers, want_numbers, strict=True)))


def substitute(text: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        text = text.replace(old, new)
    return text


def check_configs(readme: str, subs: dict[str, str]) -> None:
    for path, kind, shown in CONFIG_BLOCK.findall(readme):
        written = Path(substitute(path, subs)).read_text()
        shown = substitute(shown, subs)
        if kind == "json":
            assert json.loads(written) == json.loads(shown), f"{path} as written:\n{written}"
        else:
            assert written.split() == shown.split(), f"{path} as written:\n{written}"


def run_readme(name: str, models: Path) -> list[tuple[Step, str]]:
    """Run the README of examples/<name> as its reader would; the requests' steps and outputs."""
    folder = EXAMPLES / name
    readme = (folder / "README.md").read_text()
    subs = {"/tmp/models": str(models)}
    answers: list[tuple[Step, str]] = []
    with contextlib.ExitStack() as stack:
        server: Server | None = None
        for step in readme_steps(readme):
            command = substitute(step.command, subs)
            words = shlex.split(command, comments=True)
            if words[0] == "serving":
                assert server is None, "one `serving` command per example"
                check_configs(readme, subs)
                server = stack.enter_context(Server(*words[1:]))
                subs["localhost:8080"] = f"127.0.0.1:{server.port}"
                subs["localhost:9090"] = f"127.0.0.1:{server.grpc_port}"
                continue
            if words[0] == "python":
                argv = [sys.executable, *words[1:]]
            elif words[0] in ("curl", "for"):
                argv = ["bash", "-c", command]
            else:
                raise AssertionError(f"{name}/README.md: the test does not know how to run `{step.command}`")
            done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            if server is None:
                continue  # making the model: its output is not an answer
            got = done.stdout.strip()
            assert step.exact or step.example, f"{name}/README.md shows no answer for `{step.command}`; it gave:\n{got}"
            want = "\n".join(step.exact or step.example)
            assert same_answer(got, want, any_numbers=not step.exact), \
                f"`{step.command}`\nanswered:\n{got}\nthe README says:\n{want}"
            answers.append((step, got))
        assert server is not None, f"{name}/README.md has no `serving` command"
    return answers


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "README.md").exists())


def test_the_index_names_every_example_and_every_example_is_tested_here():
    index = (EXAMPLES / "README.md").read_text()
    for name in example_names():
        assert f"]({name}/)" in index, f"examples/README.md does not link {name}/"
        assert name in NEEDS, f"say in NEEDS what examples/{name} needs installed"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [name for name in NEEDS if name not in ("async_queue", "traffic_split")])
def test_the_framework_example_answers_as_its_readme_says(name, tmp_path):
    for module in NEEDS[name]:
        pytest.importorskip(module, reason=f"{module} is not installed")
    answers = run_readme(name, tmp_path)
    assert any("/v1/models/" in step.command for step, _ in answers)  # TF Serving REST
    assert any("/v2/models/" in step.command and "/infer" in step.command for step, _ in answers)  # KServe V2 REST
    assert any("client.py" in step.command for step, _ in answers)  # gRPC


def test_the_async_queue_example_puts_a_request_and_fetches_its_answer_from_the_sink(tmp_path):
    pytest.importorskip("xgboost", reason="xgboost is not installed")
    assert CONFIG_BLOCK.search((EXAMPLES / "async_queue" / "README.md").read_text())  # the service JSON shown
    answers = run_readme("async_queue", tmp_path)
    (_, index), (_, answer) = answers[:2]  # the put, then the fetch from the sink
    assert int(index) >= 1 and len(json.loads(answer)) == 2 and all(0 < p < 1 for p in json.loads(answer))


def test_the_traffic_split_example_splits_about_90_to_10_and_sticks_a_user_to_one_version(tmp_path):
    pytest.importorskip("xgboost", reason="xgboost is not installed")
    assert CONFIG_BLOCK.search((EXAMPLES / "traffic_split" / "README.md").read_text())  # the pbtxt shown
    answers = run_readme("traffic_split", tmp_path)
    split, sticky = [got for step, got in answers if "seq 100" in step.command or "x-user" in step.command]
    counts = {int(version): int(count) for count, version in (line.split() for line in split.splitlines())}
    assert counts.keys() == {1, 2} and sum(counts.values()) == 100 and counts[1] > counts[2], counts
    assert len(sticky.splitlines()) == 1, sticky  # one user, one version
