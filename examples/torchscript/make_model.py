"""A TorchScript program: a 4 -> 8 -> 1 MLP (seeded random weights) saved with torch.jit.save as
<dir>/ts_mlp/1/model.pt, with a signature.json naming its input `x` and its output `score`.

    python make_model.py /tmp/models
"""

import json
import sys
from pathlib import Path

import torch

version_dir = Path(sys.argv[1]) / "ts_mlp" / "1"  # <base path>/<version>: the server serves every integer folder
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
version_dir.mkdir(parents=True, exist_ok=True)
torch.jit.save(torch.jit.script(model.eval()), version_dir / "model.pt")
# Optional: without it the inputs are input__0, input__1, ... and the outputs output__0, ...
signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
             "outputs": [{"name": "score", "dtype": "float32", "shape": [-1, 1]}]}
(version_dir / "signature.json").write_text(json.dumps(signature, indent=2))
print(f"wrote {version_dir / 'model.pt'} and {version_dir / 'signature.json'}")
