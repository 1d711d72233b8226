"""Generate the Python code for protos/ into serving/_proto (the one command: `python protos/generate.py`).

Runs grpcio-tools' protoc over every .proto below protos/, then rewrites the generated absolute
imports (`from tensorflow_serving.config import ...`) to live under `serving._proto`, so our copies
never shadow or need a top-level `tensorflow_serving` package. The messages are built in a private
descriptor pool (`serving._proto._pool.POOL`), not protobuf's default one, so they never clash with
TensorFlow's or tensorflow-serving-api's own copies of the same messages in one process.
`--out DIR` writes elsewhere (the test that checks the checked-in code is current uses it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "serving._proto"
TOP_LEVEL = ("tensorflow_serving", "tensorflow", "inference", "eas", "mmesh")
WELL_KNOWN = re.compile(r'^import "google/protobuf/(\w+)\.proto";', re.M)
POOL_MODULE = '''"""The private descriptor pool of the generated messages (written by protos/generate.py)."""

from google.protobuf import descriptor_pool
{imports}

POOL = descriptor_pool.DescriptorPool()
for _well_known in ({names},):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
'''


def generate(out: Path) -> list[Path]:
    import grpc_tools  # a dev-only dependency; protoc runs in its own process (its C++ protobuf must not
    # meet TensorFlow's or torch's in one process: that crashes)

    protos = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if subprocess.run(args, cwd=ROOT).returncode != 0:
        raise SystemExit("protoc failed")
    pattern = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL)})(\.|\s)", re.M)
    well_known = sorted({m for p in protos for m in WELL_KNOWN.findall((ROOT / p).read_text())})
    (out / "_pool.py").write_text(POOL_MODULE.format(
        imports="\n".join(f"from google.protobuf import {m}_pb2" for m in well_known),
        names=", ".join(f"{m}_pb2" for m in well_known),
    ))
    written = []
    for path in sorted(out.rglob("*_pb2_grpc.py")):
        if "Stub" not in path.read_text():  # messages only: no service, no gRPC module
            path.unlink()
    for path in sorted(out.rglob("*_pb2*.py*")):
        text = pattern.sub(lambda m: f"{m[1]} {PACKAGE}.{m[2]}{m[3]}", path.read_text())
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL").replace(
            "from google.protobuf.internal import builder as _builder\n",
            f"from google.protobuf.internal import builder as _builder\nfrom {PACKAGE} import _pool\n",
        )
        path.write_text(text)
        written.append(path)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT.parent / "serving" / "_proto")
    files = generate(ap.parse_args().out)
    print(f"wrote {len(files)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
