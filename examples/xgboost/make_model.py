"""An XGBoost binary classifier, 5 trees on 200 made-up rows of 4 features, saved as <dir>/xgb/1/model.json.

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import numpy as np
import xgboost as xgb

version_dir = Path(sys.argv[1]) / "xgb" / "1"  # <base path>/<version>: the server serves every integer folder
rng = np.random.default_rng(0)
x = rng.standard_normal((200, 4)).astype(np.float32)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
data = xgb.DMatrix(x, label=y, feature_names=["f0", "f1", "f2", "f3"])  # names: rows may be sent as objects
booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 1}, data, num_boost_round=5)
version_dir.mkdir(parents=True, exist_ok=True)
booster.save_model(version_dir / "model.json")
print(f"wrote {version_dir / 'model.json'}")
