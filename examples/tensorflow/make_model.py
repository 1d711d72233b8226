"""A TensorFlow SavedModel: a 4 -> 8 -> 1 MLP (made-up fixed weights) whose `serving_default` signature takes
`x` float32 [-1, 4] and answers `score` [-1, 1]; saved as <dir>/tf_mlp/1/ (saved_model.pb + variables/).

    python make_model.py /tmp/models
"""

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

version_dir = Path(sys.argv[1]) / "tf_mlp" / "1"  # <base path>/<version>: the server serves every integer folder
rng = np.random.default_rng(0)


class MLP(tf.Module):
    def __init__(self) -> None:
        self.w1 = tf.Variable(rng.standard_normal((4, 8)).astype(np.float32))
        self.b1 = tf.Variable(rng.standard_normal(8).astype(np.float32))
        self.w2 = tf.Variable(rng.standard_normal((8, 1)).astype(np.float32))

    # The signature: input names, dtypes and shapes (None: any batch size) as clients will see them.
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"score": tf.sigmoid(tf.nn.relu(x @ self.w1 + self.b1) @ self.w2)}


model = MLP()
tf.saved_model.save(model, str(version_dir), signatures={"serving_default": model.serve})
print(f"wrote {version_dir}")
