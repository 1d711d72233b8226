"""Two versions of an XGBoost classifier (version 1: 5 trees, version 2: 20 trees) under <dir>/xgb/ and the
model_config.pbtxt <dir>/models.pbtxt that splits the requests 90/10 over them.

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import numpy as np
import xgboost as xgb

root = Path(sys.argv[1]).absolute()
rng = np.random.default_rng(0)
x = rng.standard_normal((200, 4)).astype(np.float32)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
for version, trees in ((1, 5), (2, 20)):
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 1}, xgb.DMatrix(x, label=y), trees)
    (root / "xgb" / str(version)).mkdir(parents=True, exist_ok=True)
    booster.save_model(root / "xgb" / str(version) / "model.json")

(root / "models.pbtxt").write_text(f"""model_config_list {{
  config {{
    name: "xgb"
    base_path: "{root / 'xgb'}"
    model_platform: "xgboost"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
    version_traffic {{ key: 1 value: 90 }}
    version_traffic {{ key: 2 value: 10 }}
  }}
}}
""")
print(f"wrote {root / 'xgb' / '1'}, {root / 'xgb' / '2'} and {root / 'models.pbtxt'}")
