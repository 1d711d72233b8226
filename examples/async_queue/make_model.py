"""An asynchronous service: an XGBoost classifier (5 trees, 4 features) as <dir>/xgb/1/model.json and the
service JSON <dir>/service.json that serves it through a queue (`"metadata": {"type": "Async"}`).

    python make_model.py /tmp/models
"""

import json
import sys
from pathlib import Path

import numpy as np
import xgboost as xgb

root = Path(sys.argv[1]).absolute()
rng = np.random.default_rng(0)
x = rng.standard_normal((200, 4)).astype(np.float32)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 1}, xgb.DMatrix(x, label=y), 5)
(root / "xgb" / "1").mkdir(parents=True, exist_ok=True)
booster.save_model(root / "xgb" / "1" / "model.json")

service = {"name": "xgb", "processor": "xgboost", "model_path": str(root / "xgb"), "metadata": {"type": "Async"}}
(root / "service.json").write_text(json.dumps(service, indent=2) + "\n")
print(f"wrote {root / 'xgb' / '1' / 'model.json'} and {root / 'service.json'}")
