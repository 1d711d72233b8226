"""A LightGBM regressor, 5 trees on 200 made-up rows of 4 features, saved as <dir>/lgbm/1/model.txt.

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np

version_dir = Path(sys.argv[1]) / "lgbm" / "1"  # <base path>/<version>: the server serves every integer folder
rng = np.random.default_rng(0)
x = rng.standard_normal((200, 4)).astype(np.float32)
y = 2.0 * x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(200)
data = lgb.Dataset(x, label=y, feature_name=["f0", "f1", "f2", "f3"])  # names: rows may be sent as objects
model = lgb.train({"objective": "regression", "num_leaves": 7, "verbose": -1, "seed": 1}, data, num_boost_round=5)
version_dir.mkdir(parents=True, exist_ok=True)
model.save_model(version_dir / "model.txt")
print(f"wrote {version_dir / 'model.txt'}")
