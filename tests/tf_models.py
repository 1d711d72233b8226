"""TensorFlow fixtures made at test time: TF Serving's hand-checkable half_plus_two (y = 0.5x + 2) with
`serving_default`, `classify_x_to_y` and `regress_x_to_y` signatures (TF1-style, as TF Serving's own
test data), and a TF2 module with a string input."""

from __future__ import annotations

from pathlib import Path


def half_plus_two(path: Path, a: float = 0.5, b: float = 2.0, count_examples: bool = False) -> Path:
    """`count_examples`: classify/regress also add their example count to a variable that a `calls`
    signature reads (x [-1] -> calls [-1], the count in every row), so a test can see them run."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf1.placeholder(tf.string, shape=[None], name="tf_example")
        parsed = tf1.parse_example(serialized, {"x": tf1.FixedLenFeature([1], tf.float32)})
        x = tf1.placeholder(tf.float32, shape=[None], name="x")
        va, vb = tf1.Variable(a, name="a"), tf1.Variable(b, name="b")
        y = tf.add(tf.multiply(va, x), vb, name="y")
        signatures = {"serving_default": tf1.saved_model.predict_signature_def({"x": x}, {"y": y})}
        x_example = parsed["x"]
        if count_examples:
            calls = tf1.Variable(0.0, name="calls")
            counted = calls.assign_add(tf.cast(tf.size(serialized), tf.float32))
            with tf.control_dependencies([counted]):
                x_example = tf.identity(x_example)
            signatures["calls"] = tf1.saved_model.predict_signature_def(
                {"x": x}, {"calls": calls.read_value() + tf.zeros_like(x)})
        y_example = tf.add(tf.multiply(va, x_example), vb, name="y_from_example")
        signatures["classify_x_to_y"] = tf1.saved_model.classification_signature_def(serialized, None, y_example)
        signatures["regress_x_to_y"] = tf1.saved_model.regression_signature_def(serialized, y_example)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    return path


def bf16_model(path: Path) -> Path:
    """TF2: `serving_default` (x bfloat16 [-1]) -> y bfloat16 = 2x + 1, y32 float32 = the same widened."""
    import tensorflow as tf

    class Bf16(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.bfloat16, name="x")])
        def serve(self, x):
            y = x * tf.constant(2.0, tf.bfloat16) + tf.constant(1.0, tf.bfloat16)
            return {"y": y, "y32": tf.cast(y, tf.float32)}

    module = Bf16()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def text_model(path: Path) -> Path:
    """TF2: `serving_default` (words string [-1], scale float [-1]) -> length float, echo string."""
    import tensorflow as tf

    class Text(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words"),
                                      tf.TensorSpec([None], tf.float32, name="scale")])
        def serve(self, words, scale):
            return {"length": tf.cast(tf.strings.length(words), tf.float32) * scale,
                    "echo_bytes": words}

    module = Text()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path
