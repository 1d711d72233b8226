"""An ONNX model: a 4 -> 8 -> 1 MLP (seeded random weights) exported from torch with a dynamic batch dimension
as <dir>/onnx_mlp/1/model.onnx, input `x` and output `score`. Any exporter works (tf2onnx, skl2onnx, ...).

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import torch

version_dir = Path(sys.argv[1]) / "onnx_mlp" / "1"  # <base path>/<version>: the server serves every integer folder
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
version_dir.mkdir(parents=True, exist_ok=True)
torch.onnx.export(model.eval(), (torch.zeros(1, 4),), version_dir / "model.onnx", input_names=["x"],
                  output_names=["score"], dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
                  dynamo=False)  # the TorchScript-based exporter: the dynamo one needs the onnxscript package
print(f"wrote {version_dir / 'model.onnx'}")
