"""The torch_export processor in process, on modules exported at test time: an MLP, a two-input tuple-output
module with a dynamic batch dim (`torch.export.Dim`), a dict-output module, and that module compiled into an
AOTInductor package with this machine's C++ compiler; names, shapes, dim ranges, batches split at the bound.
Served over every protocol: tests/e2e/test_torch_export.py."""

import json
import shutil
import warnings
import zipfile

import numpy as np
import pytest

from serving.core.processor import detect_platform, processor_class
from serving.errors import Code, ServingError

torch = pytest.importorskip("torch", reason="torch (extra torch) is not installed")

MAX_BATCH = 16  # the batch Dim's upper bound: a larger batch is refused alone, run in pieces when joined


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(4, 2)

    def forward(self, features):
        return self.b(torch.relu(self.a(features)))


class TwoInOut(torch.nn.Module):
    """Two inputs, a tuple out (the TorchScript tests' module)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(4, 2)

    def forward(self, features, offset):
        h = torch.relu(self.a(features)) + offset.unsqueeze(1)
        return self.b(h), h.sum(dim=1)


class DictOut(TwoInOut):
    def forward(self, features, offset):
        scores, total = super().forward(features, offset)
        return {"scores": scores, "total": total}


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [2.0, 0.0, -2.0]], dtype=np.float32)
Z = np.array([0.5, -0.5, 0.0], dtype=np.float32)


def export(module_class, *, dynamic=True):
    torch.manual_seed(0)
    module = module_class().eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    args = (torch.from_numpy(X),) if module_class is Mlp else (torch.from_numpy(X), torch.from_numpy(Z))
    shapes = [{0: batch}] * len(args) if dynamic else None
    return module, torch.export.export(module, args, dynamic_shapes=shapes)


def save_program(base, module_class=TwoInOut, version=1, name="model.pt2", **kw):
    """An ExportedProgram saved as `base/version/name`; returns the eager module and the version dir."""
    module, ep = export(module_class, **kw)
    d = base / str(version)
    d.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(d / name))
    return module, d


_PACKAGES = {}  # one AOTInductor compile per test session (~40 s on two cores), shared with the e2e tests


def compiler_or_skip():
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("AOTInductor compiles C++: no g++ or c++ on this machine")


def aoti_package(tmp_path_factory):
    """The two-input module compiled by aoti_compile_and_package into `<dir>/1/model.pt2`; (eager module, dir)."""
    compiler_or_skip()
    if "package" not in _PACKAGES:
        module, ep = export(TwoInOut)
        d = tmp_path_factory.mktemp("aoti") / "1"
        d.mkdir()
        with warnings.catch_warnings():  # inductor's own use of torch's deprecated pytree names
            warnings.simplefilter("ignore", FutureWarning)
            torch._inductor.aoti_compile_and_package(ep, package_path=str(d / "model.pt2"))
        _PACKAGES["package"] = (module, d)
    return _PACKAGES["package"]


def reference(module, *arrays):
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in arrays))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def loaded(d, device="cpu", **options):
    proc = processor_class("pt2")()
    proc.load(d, device, options)
    return proc


def test_a_pt2_is_detected_as_torch_export_and_a_pt_stays_torchscript(tmp_path):
    _, d = save_program(tmp_path / "ep")
    assert detect_platform(d) == "torch_export"
    scripted = tmp_path / "ts"
    scripted.mkdir()
    torch.jit.save(torch.jit.script(Mlp()), str(scripted / "model.pt"))
    assert detect_platform(scripted) == "torchscript"


def test_an_exported_mlp_answers_as_its_program_module(tmp_path):
    module, d = save_program(tmp_path, Mlp)
    proc = loaded(d)
    sig = proc.signature("")
    assert proc.kind == "program"
    assert {n: s.shape for n, s in sig.inputs.items()} == {"features": (-1, 3)}
    assert {n: s.shape for n, s in sig.outputs.items()} == {"output_0": (-1, 2)}
    with torch.inference_mode():
        want = torch.export.load(str(d / "model.pt2")).module()(torch.from_numpy(X)).numpy()
    out = proc.predict({"features": X}, "")
    np.testing.assert_allclose(out["output_0"], want, rtol=1e-6)
    np.testing.assert_allclose(out["output_0"], reference(module, X)[0], rtol=1e-5)


def test_two_inputs_are_named_after_forward_and_a_tuple_is_output_0_and_output_1(tmp_path):
    module, d = save_program(tmp_path)
    proc = loaded(d)
    sig = proc.signature("")
    assert [(n, s.dtype.name, s.shape) for n, s in sig.inputs.items()] == [
        ("features", "float32", (-1, 3)), ("offset", "float32", (-1,))]
    assert [(n, s.shape) for n, s in sig.outputs.items()] == [("output_0", (-1, 2)), ("output_1", (-1,))]
    out = proc.predict({"features": X, "offset": Z}, "")
    for name, want in zip(("output_0", "output_1"), reference(module, X, Z), strict=True):
        np.testing.assert_allclose(out[name], want, rtol=1e-5)


def test_dict_outputs_keep_their_keys(tmp_path):
    module, d = save_program(tmp_path, DictOut)
    proc = loaded(d)
    assert list(proc.signature("").outputs) == ["scores", "total"]
    out = proc.predict({"features": X, "offset": Z}, "")
    with torch.no_grad():
        want = module(torch.from_numpy(X), torch.from_numpy(Z))
    np.testing.assert_allclose(out["scores"], want["scores"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["total"], want["total"].numpy(), rtol=1e-5)


def test_a_batch_outside_the_dim_range_is_refused_naming_the_dimension(tmp_path):
    _, d = save_program(tmp_path)
    proc = loaded(d)
    rows = MAX_BATCH + 1
    with pytest.raises(ServingError) as e:
        proc.validate({"features": np.zeros((rows, 3), np.float32), "offset": np.zeros(rows, np.float32)},
                      proc.signature(""))
    assert e.value.code is Code.INVALID_ARGUMENT
    assert e.value.message == (f"input 'features' dimension 0 is {rows}, outside the range the model was exported "
                               f"with (1 to {MAX_BATCH}, torch.export.Dim)")
    proc.validate({"features": X, "offset": Z}, proc.signature(""))


def test_joined_batches_past_the_bound_run_in_pieces(tmp_path):
    module, d = save_program(tmp_path)
    proc = loaded(d)
    assert proc.chunk == MAX_BATCH
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    out = proc.predict({"features": x, "offset": z}, "")
    want = reference(module, x, z)
    np.testing.assert_allclose(out["output_0"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["output_1"], want[1], rtol=1e-5, atol=1e-6)


def test_dims_exported_as_one_dim_must_agree_and_derived_ones_are_the_programs_guards(tmp_path):
    class Pair(torch.nn.Module):
        def forward(self, x, y):
            return x.repeat(1, 2) + y

    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", min=1, max=8)
    ep = torch.export.export(Pair(), (torch.ones(2, 3), torch.ones(2, 6)),
                             dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: 2 * seq}))
    d = tmp_path / "1"
    d.mkdir()
    torch.export.save(ep, str(d / "pair.pt2"))
    proc = loaded(d)
    assert [s.shape for s in proc.signature("").inputs.values()] == [(-1, -1), (-1, -1)]
    with pytest.raises(ServingError, match=r"input 'x' dimension 1 is 9, outside the range the model was exported "
                                           r"with \(1 to 8, torch.export.Dim\)"):
        proc.validate({"x": np.ones((1, 9), np.float32), "y": np.ones((1, 18), np.float32)}, proc.signature(""))
    np.testing.assert_allclose(proc.predict({"x": np.ones((1, 2), np.float32), "y": np.ones((1, 4), np.float32)},
                                            "")["output_0"], np.full((1, 4), 2.0))
    with pytest.raises(ServingError) as e:  # y's dim 1 is 2 * seq: a relation only the program's guards know
        proc.predict({"x": np.ones((1, 3), np.float32), "y": np.ones((1, 5), np.float32)}, "")
    assert e.value.code is Code.INVALID_ARGUMENT
    assert e.value.message == "the exported model refused the inputs: Guard failed: 2 * x.size()[1] == y.size()[1]"


def test_a_fixed_batch_dim_runs_joined_requests_in_pieces_of_it(tmp_path):
    module, d = save_program(tmp_path, dynamic=False)
    proc = loaded(d)
    assert proc.signature("").inputs["features"].shape == (3, 3) and proc.chunk == 3
    x, z = np.concatenate([X, X[::-1]]), np.concatenate([Z, Z[::-1]])
    np.testing.assert_allclose(proc.predict({"features": x, "offset": z}, "")["output_0"],
                               reference(module, x, z)[0], rtol=1e-5)


def test_signature_json_overrides_the_names_and_must_match_the_count(tmp_path):
    module, d = save_program(tmp_path)
    doc = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}, {"name": "z", "shape": [-1]}],
           "outputs": [{"name": "scores", "shape": [-1, 2]}, {"name": "total", "shape": [-1]}]}
    (d / "signature.json").write_text(json.dumps(doc))
    proc = loaded(d)
    assert list(proc.signature("").inputs) == ["x", "z"] and list(proc.signature("").outputs) == ["scores", "total"]
    np.testing.assert_allclose(proc.predict({"x": X, "z": Z}, "")["total"], reference(module, X, Z)[1], rtol=1e-5)
    with pytest.raises(ServingError, match="outside the range"):  # the program's ranges still hold
        proc.validate({"x": np.zeros((MAX_BATCH + 1, 3), np.float32), "z": np.zeros(MAX_BATCH + 1, np.float32)},
                      proc.signature(""))
    doc["inputs"].pop()
    (d / "signature.json").write_text(json.dumps(doc))
    with pytest.raises(ServingError) as e:
        loaded(d)
    assert e.value.code is Code.FAILED_PRECONDITION and "declares 1 input(s) and 2 output(s); the exported model " \
                                                        "has 2 and 2" in e.value.message


def test_a_pt2_that_is_no_export_archive_fails_the_load_clearly(tmp_path):
    d = tmp_path / "1"
    d.mkdir()
    (d / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(ServingError) as e:
        loaded(d)
    assert e.value.code is Code.FAILED_PRECONDITION and "not a zip archive" in e.value.message
    with zipfile.ZipFile(d / "model.pt2", "w") as z:
        z.writestr("model/data.pkl", b"")
    with pytest.raises(ServingError) as e:
        loaded(d)
    assert e.value.code is Code.FAILED_PRECONDITION
    assert e.value.message.startswith("model.pt2 is neither an ExportedProgram (torch.export.save) nor an "
                                      "AOTInductor package")


def test_cuda_where_there_is_none_fails_the_load_unless_auto(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, d = save_program(tmp_path)
    with pytest.raises(ServingError) as e:
        loaded(d, "cuda")
    assert e.value.code is Code.FAILED_PRECONDITION and "no CUDA device is present" in e.value.message
    assert loaded(d, "auto").device == "cpu"


def test_aoti_input_names_come_from_the_call_spec():
    from torch.utils import _pytree as pytree

    from processors.torch_export_processor import input_names

    t = torch.zeros(1)
    assert input_names(pytree.tree_flatten(((t, t), {}))[1], 2) == ["input_0", "input_1"]
    assert input_names(pytree.tree_flatten(((t,), {"mask": t}))[1], 2) == ["input_0", "mask"]
    assert input_names(pytree.tree_flatten(((t,), {}))[1], 2) == ["input_0", "input_1"]  # counts disagree


@pytest.mark.timeout(900)  # the first of these compiles the package
def test_an_aoti_package_answers_as_aoti_load_package(tmp_path_factory):
    module, d = aoti_package(tmp_path_factory)
    proc = loaded(d)
    sig = proc.signature("")
    assert proc.kind == "aoti"
    # shapes and bounds from the compiled input checks; names from the call spec (positional)
    assert [(n, s.dtype.name, s.shape) for n, s in sig.inputs.items()] == [
        ("input_0", "float32", (-1, 3)), ("input_1", "float32", (-1,))]
    assert list(sig.outputs) == ["output_0", "output_1"] and proc.chunk == MAX_BATCH
    compiled = torch._inductor.aoti_load_package(str(d / "model.pt2"))
    with torch.inference_mode():
        want = [t.numpy() for t in compiled(torch.from_numpy(X), torch.from_numpy(Z))]
    out = proc.predict({"input_0": X, "input_1": Z}, "")
    np.testing.assert_allclose(out["output_0"], want[0], rtol=1e-6)
    np.testing.assert_allclose(out["output_1"], want[1], rtol=1e-6)
    one = proc.predict({"input_0": X[:1], "input_1": Z[:1]}, "")  # inductor's bound says >= 2; one row runs
    np.testing.assert_allclose(one["output_0"], want[0][:1], rtol=1e-5)
    rows = MAX_BATCH + 1
    with pytest.raises(ServingError, match=rf"input 'input_0' dimension 0 is {rows}, outside the range the model "
                                           rf"was exported with \(1 to {MAX_BATCH}, torch.export.Dim\)"):
        proc.validate({"input_0": np.zeros((rows, 3), np.float32), "input_1": np.zeros(rows, np.float32)}, sig)
    rng = np.random.default_rng(2)
    x, z = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    np.testing.assert_allclose(proc.predict({"input_0": x, "input_1": z}, "")["output_0"],
                               reference(module, x, z)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(900)
def test_an_aoti_package_with_its_program_beside_it_takes_the_programs_names(tmp_path_factory, tmp_path):
    module, d = aoti_package(tmp_path_factory)
    _, ep_dir = save_program(tmp_path / "ep")
    combined = tmp_path / "both" / "1"
    combined.mkdir(parents=True)
    # what torch.export.pt2_archive._package.package_pt2(exported_programs=..., aoti_files=...) writes: one archive
    # prefix, the program's models/ and data/ beside data/aotinductor/
    with zipfile.ZipFile(d / "model.pt2") as aoti, zipfile.ZipFile(ep_dir / "model.pt2") as ep, \
            zipfile.ZipFile(combined / "model.pt2", "w") as out:
        prefix = aoti.namelist()[0].split("/")[0]
        for name in aoti.namelist():
            out.writestr(aoti.getinfo(name), aoti.read(name))
        for name in ep.namelist():
            rest = name.split("/", 1)[1]
            if rest.startswith(("models/", "data/")):
                out.writestr(f"{prefix}/{rest}", ep.read(name))
    proc = loaded(combined)
    assert proc.kind == "aoti" and list(proc.signature("").inputs) == ["features", "offset"]
    np.testing.assert_allclose(proc.predict({"features": X, "offset": Z}, "")["output_1"],
                               reference(module, X, Z)[1], rtol=1e-5)


@pytest.mark.timeout(900)
def test_an_aoti_package_runs_on_the_device_it_was_compiled_for(tmp_path_factory):
    _, d = aoti_package(tmp_path_factory)
    assert loaded(d, "auto").device == "cpu"
    if torch.cuda.is_available():
        with pytest.raises(ServingError) as e:
            loaded(d, "cuda")
        assert e.value.code is Code.FAILED_PRECONDITION and "was compiled for cpu, not cuda" in e.value.message
