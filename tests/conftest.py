import os

import pytest

# Keep the frameworks on one thread each: the suite runs on 2 cores beside server processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def channel(server):
    """A gRPC channel to the module's `server` fixture (a tests.helpers.Server)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="cuda: run tests/e2e/test_cuda.py's CUDA tests and fail (not skip) where no CUDA device is "
                          "present; cpu (the default): they are skipped")


@pytest.fixture(scope="session")
def device(request):
    return request.config.getoption("--device")
