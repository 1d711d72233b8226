"""Generate the Python code for protos/ into serving/_proto (the one command: `python protos/generate.py`).

Runs grpcio-tools' protoc over every .proto below protos/, then rewrites the generated absolute
imports (`from tensorflow_serving.config import ...`) to live under `serving._proto`, so our copies
never shadow or need a top-level `tensorflow_serving` package. `--out DIR` writes elsewhere (the test
that checks the checked-in code is current uses it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "serving._proto"
TOP_LEVEL = ("tensorflow_serving", "tensorflow", "inference", "pytorch_predict", "tf_predict")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here: a dev-only dependency

    protos = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pattern = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL)})(\.|\s)", re.M)
    written = []
    for path in sorted(out.rglob("*_pb2_grpc.py")):
        if "Stub" not in path.read_text():  # messages only: no service, no gRPC module
            path.unlink()
    for path in sorted(out.rglob("*.py*")):
        text = pattern.sub(lambda m: f"{m[1]} {PACKAGE}.{m[2]}{m[3]}", path.read_text())
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
