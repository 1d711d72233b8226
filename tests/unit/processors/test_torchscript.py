"""The TorchScript processor in process, on an MLP scripted at test time: two inputs, a tuple output; its
load, validation and failures. Served over HTTP: tests/e2e/test_torchscript.py."""

import json

import numpy as np
import pytest

from serving.core.processor import processor_class
from serving.errors import Code, ServingError

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")


def make_mlp(base, version=1, signature=False):
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 4)
            self.b = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, z: torch.Tensor):
            h = torch.relu(self.a(x)) + z.unsqueeze(1)
            return self.b(h), h.sum(dim=1)

    module = MLP().eval()
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(d / "model.pt"))
    if signature:
        (d / "signature.json").write_text(json.dumps({
            "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 3]},
                       {"name": "offset", "dtype": "float32", "shape": [-1]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 2]},
                        {"name": "total", "dtype": "float32", "shape": [-1]}],
        }))
    return module, d


def reference(module, x, z):
    with torch.no_grad():
        a, b = module(torch.from_numpy(x), torch.from_numpy(z))
    return a.numpy(), b.numpy()


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [2.0, 0.0, -2.0]], dtype=np.float32)
Z = np.array([0.5, -0.5, 0.0], dtype=np.float32)


def test_positional_names_from_the_schema(tmp_path):
    module, d = make_mlp(tmp_path)
    proc = processor_class("pytorch")()
    proc.load(d, "cpu", {})
    sig = proc.signature("")
    assert list(sig.inputs) == ["input__0", "input__1"] and list(sig.outputs) == ["output__0", "output__1"]
    out = proc.predict({"input__0": X, "input__1": Z}, "")
    want = reference(module, X, Z)
    np.testing.assert_allclose(out["output__0"], want[0], rtol=1e-6)
    np.testing.assert_allclose(out["output__1"], want[1], rtol=1e-6)


def test_cuda_where_there_is_none_fails_the_load_unless_auto(tmp_path):
    _, d = make_mlp(tmp_path)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ServingError) as e:
        processor_class("torchscript")().load(d, "cuda", {})
    assert e.value.code is Code.FAILED_PRECONDITION and "no CUDA device is present" in e.value.message
    proc = processor_class("torchscript")()
    proc.load(d, "auto", {})
    assert proc.device == "cpu"


def test_a_failure_on_shapes_the_model_has_run_stays_the_models_own(tmp_path):
    class Picky(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            if bool((x < 0).any()):
                raise ValueError("negative input")
            return x * 2

    d = tmp_path / "1"
    d.mkdir()
    torch.jit.save(torch.jit.script(Picky()), str(d / "model.pt"))
    proc = processor_class("torchscript")()
    proc.load(d, "cpu", {})
    proc.predict({"input__0": np.ones((2, 3), np.float32)}, "")
    with pytest.raises(Exception, match="negative input") as e:  # the engine answers it INTERNAL (500)
        proc.predict({"input__0": -np.ones((1, 3), np.float32)}, "")
    assert not isinstance(e.value, ServingError)


def test_row_shapes_the_model_refused_are_refused_by_validate_before_queueing(tmp_path):
    _, d = make_mlp(tmp_path)
    proc = processor_class("torchscript")()
    proc.load(d, "cpu", {})
    good = {"input__0": X, "input__1": Z}
    bad = {"input__0": np.ones((5, 2), np.float32), "input__1": np.zeros(5, np.float32)}
    proc.validate(bad, proc.signature(""))  # nothing refused yet: the model decides
    proc.predict(good, "")
    with pytest.raises(ServingError) as refused:
        proc.predict(bad, "")
    assert refused.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ServingError) as e:
        proc.validate({"input__0": np.ones((1, 2), np.float32), "input__1": np.zeros(1, np.float32)},
                      proc.signature(""))
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT, refused.value.message)
    proc.validate(good, proc.signature(""))


def test_cuda_out_of_memory_is_told_apart_from_a_model_failure():
    from processors.torchscript_processor import out_of_memory

    # torch's own text, raised directly (torch.cuda.OutOfMemoryError) and from inside a TorchScript model
    direct = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 256.00 TiB. GPU 0 has a total capacity of 139.80 GiB of which "
        "138.9 GiB is free. Of the allocated memory 4.00 MiB is allocated by PyTorch. If reserved but unallocated "
        "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
    scripted = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of "
                            "TorchScript (most recent call last):\n  File \"code/__torch__.py\", line 9\n"
                            f"RuntimeError: {direct}\n")
    assert out_of_memory(direct) == out_of_memory(scripted) == "CUDA out of memory. Tried to allocate 256.00 TiB"
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x2 and 3x4)")) is None
