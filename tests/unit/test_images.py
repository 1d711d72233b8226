"""The container images (Dockerfile.cpu, Dockerfile.gpu) read as text: they install through pyproject.toml's
extras, run as a non-root user, serve the TF Serving image's ports and model path. No Docker engine is needed;
hadolint lints the files themselves from `make test`. Their HEALTHCHECK command against a live and a dead
server: tests/e2e/test_images.py; the CPU image built and run with podman: `make image-test`."""

import re
import shlex
import tomllib

import pytest

from serving.core.processor import REGISTRY
from tests.helpers import ROOT

IMAGES = ("Dockerfile.cpu", "Dockerfile.gpu")
# The torch==2.13.0 wheel PyPI serves for Linux x86_64 is the multi-GB CUDA build: the CPU image takes torch
# from PyTorch's CPU index (2.13.0+cpu).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Extras naming a CPU-only wheel, and the GPU extra of pyproject.toml the GPU image installs instead (each
# pair shares an import name, so installing both would shadow one build with the other).
CUDA_BUILD_OF = {"xgboost": "xgboost-gpu", "onnx": "onnx-gpu", "tensorflow": "tensorflow-gpu"}


def instructions(image: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, continuation lines joined and comment lines dropped."""
    lines = [ln for ln in (ROOT / image).read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def args_of(image: str, keyword: str) -> list[str]:
    return [args for kw, args in instructions(image) if kw == keyword]


def env_of(image: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for args in args_of(image, "ENV") for pair in shlex.split(args))


def build_arg(image: str, name: str) -> str:
    values = [args.split("=", 1)[1] for args in args_of(image, "ARG") if args.startswith(f"{name}=")]
    assert len(values) == 1, f"{image}: expected one ARG {name}=..., found {values}"
    return values[0]


def pip_install(image: str) -> list[str]:
    """The words of the one `pip install` that installs the project."""
    runs = [args for args in args_of(image, "RUN") if '".[${EXTRAS}]"' in args]
    assert len(runs) == 1, f"{image}: expected one RUN pip install \".[${{EXTRAS}}]\", found {runs}"
    return shlex.split(runs[0].split("pip install", 1)[1])


def image_extras(image: str) -> set[str]:
    assert ".[${EXTRAS}]" in pip_install(image), f"{image} does not install the project with its EXTRAS"
    return set(build_arg(image, "EXTRAS").split(","))


def cuda_packages(image: str) -> dict[str, str]:
    """Requirements the image installs beside the project's extras: name -> version specifier."""
    words = pip_install(image)
    words = [w for i, w in enumerate(words) if not w.startswith("-") and w != ".[${EXTRAS}]"
             and not (i and words[i - 1] == "--extra-index-url")]
    return dict(re.match(r"([\w.\-\[\]]+)(.*)", w).groups() for w in words)  # type: ignore[union-attr]


def pyproject_extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def served_extras() -> set[str]:
    """The extras an image carries: every registered processor's framework, and OpenTelemetry's exporter."""
    return {entry.extra for entry in REGISTRY.values() if entry.extra} | {"otel"}


@pytest.mark.parametrize("image", IMAGES)
def test_every_extra_an_image_installs_exists_in_pyproject(image):
    assert image_extras(image) - set(pyproject_extras()) == set()


def test_the_cpu_image_carries_every_processor_with_torchs_cpu_build():
    assert image_extras("Dockerfile.cpu") == served_extras()
    assert cuda_packages("Dockerfile.cpu") == {}
    words = pip_install("Dockerfile.cpu")
    assert words[words.index("--extra-index-url") + 1] == "${TORCH_CPU_INDEX}"
    assert build_arg("Dockerfile.cpu", "TORCH_CPU_INDEX") == TORCH_CPU_INDEX
    assert "--extra-index-url" not in pip_install("Dockerfile.gpu")  # the GPU image wants PyPI's CUDA build


def test_the_cpu_image_takes_its_base_as_a_build_argument_python_slim_by_default():
    (first, *_), froms = instructions("Dockerfile.cpu"), args_of("Dockerfile.cpu", "FROM")
    assert first == ("ARG", "BASE_IMAGE=python:3.11-slim")  # an ARG before FROM is what FROM may use
    assert froms == ["${BASE_IMAGE}"]


def test_the_gpu_image_carries_every_processor_as_its_cuda_build():
    extras = image_extras("Dockerfile.gpu")
    assert extras == {CUDA_BUILD_OF.get(extra, extra) for extra in served_extras()}
    assert extras & set(CUDA_BUILD_OF) == set(), "a CPU-only wheel would shadow its CUDA build"
    assert cuda_packages("Dockerfile.gpu") == {}  # no second list of packages beside the extras


def test_the_cuda_extras_keep_the_version_floors_of_the_cpu_extras_they_replace():
    extras = pyproject_extras()
    for cpu, gpu in CUDA_BUILD_OF.items():
        floors = [re.search(r">=\S+", requirement) for requirement in (*extras[cpu], *extras[gpu])]
        assert all(floors) and len({f.group(0) for f in floors if f}) == 1, (extras[cpu], extras[gpu])


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_runs_as_a_non_root_user(image):
    users = args_of(image, "USER")
    assert users, f"{image} has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_exposes_the_ports_its_entrypoint_serves_on(image):
    assert args_of(image, "EXPOSE") == ["8080 9090"]
    assert args_of(image, "ENTRYPOINT") == ['["serving", "--rest_api_port=8080", "--port=9090"]']


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_reads_the_model_from_models_as_tf_servings_image(image):
    env = env_of(image)
    assert (env["MODEL_NAME"], env["MODEL_BASE_PATH"]) == ("model", "/models")
