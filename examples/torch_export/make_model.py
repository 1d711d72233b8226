"""A torch.export program: a 4 -> 8 -> 1 MLP (seeded random weights) exported with a dynamic batch dimension
and saved with torch.export.save as <dir>/pt2_mlp/1/model.pt2.

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import torch

version_dir = Path(sys.argv[1]) / "pt2_mlp" / "1"  # <base path>/<version>: the server serves every integer folder


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1),
                                       torch.nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # served as input `x`, output `score`
        return {"score": self.net(x)}


batch = torch.export.Dim("batch")  # without it the program only takes the example's batch size
program = torch.export.export(MLP().eval(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}})
version_dir.mkdir(parents=True, exist_ok=True)
torch.export.save(program, version_dir / "model.pt2")
print(f"wrote {version_dir / 'model.pt2'}")
