"""Make the bundled demo model repository (fixed seeds, no downloads): `python -m serving.tools.demo DIR`.

    DIR/xgb/1, DIR/xgb/2     XGBoost binary classifiers, 8 named features f0..f7 (model.json)
    DIR/lgbm/1, DIR/lgbm/2   LightGBM regressors, 8 features (model.txt)
    DIR/model_config.pbtxt   serves both models, both versions, labels stable -> 1 and canary -> 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

N_FEATURES = 8
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
SEED = 20261124

CONFIG = """\
model_config_list {{
  config {{
    name: "xgb"
    base_path: "{root}/xgb"
    model_platform: "xgboost"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "lgbm"
    base_path: "{root}/lgbm"
    model_platform: "lightgbm"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""


def data(n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    score = x[:, 0] * 1.5 - x[:, 1] + 0.5 * x[:, 2] * x[:, 3]
    return x, (score > 0).astype(np.int32), score.astype(np.float32)


def make(root: Path) -> Path:
    import lightgbm as lgb
    import xgboost as xgb

    root = root.resolve()
    x, labels, score = data()
    for version, trees in ((1, 10), (2, 30)):
        (root / "xgb" / str(version)).mkdir(parents=True, exist_ok=True)
        dtrain = xgb.DMatrix(x, label=labels, feature_names=FEATURES)
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 4, "seed": SEED, "nthread": 1}, dtrain, trees
        )
        booster.save_model(str(root / "xgb" / str(version) / "model.json"))

        (root / "lgbm" / str(version)).mkdir(parents=True, exist_ok=True)
        params = {"objective": "regression", "num_leaves": 15, "seed": SEED, "deterministic": True,
                  "num_threads": 1, "verbose": -1}
        model = lgb.train(params, lgb.Dataset(x, label=score, feature_name=FEATURES), trees)
        model.save_model(str(root / "lgbm" / str(version) / "model.txt"))
    config = root / "model_config.pbtxt"
    config.write_text(CONFIG.format(root=root))
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description="Make the demo model repository.")
    ap.add_argument("dir", type=Path, nargs="?", default=Path("demo_models"))
    print(make(ap.parse_args().dir))


if __name__ == "__main__":
    main()
