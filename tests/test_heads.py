"""Heads beyond one label per image: binary, a value (regression), element K of a vector, several outputs, and outputs
explain cannot read. Each map equals an independent full-tape computation of the same score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, ExplainError, Explainer
from explain_cli.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def model_with(keras, *heads, seed: int = 4):
    """Conv / ReLU / conv / ReLU, pooled, then each head: a Dense(units, activation) named by the head's name."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 40, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="first")(x)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="second")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = [keras.layers.Dense(units, activation=activation, name=name)(pooled) for name, units, activation in heads]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name="headed")


def images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)


def gradcam_by_tape(keras, model, images: np.ndarray, score) -> np.ndarray:
    """Grad-CAM at "second" from one GradientTape over the whole forward pass: ReLU(Σ_k mean(∂s/∂A^k) A^k)."""
    import tensorflow as tf

    multi = keras.Model(model.input, [model.get_layer("second").output, model.get_layer("pool").output])
    with tf.GradientTape() as tape:
        activations, pooled = multi(tf.constant(images, tf.float32))
        chosen = tf.reduce_sum(score(pooled))
    gradients = tape.gradient(chosen, activations).numpy()
    return np.maximum((gradients.mean(axis=(1, 2), keepdims=True) * activations.numpy()).sum(-1), 0.0)


def dense_pre_activation(model, name: str):
    """The named Dense without its activation, from its own weights: the score explain differentiates."""
    kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
    return lambda pooled: pooled @ kernel + bias


def close(actual, expected) -> None:
    scale = np.abs(expected).max()
    assert scale > 0, "an all-zero reference proves nothing"
    np.testing.assert_allclose(actual, expected, atol=1e-4 * scale)


def test_a_binary_head_explains_the_positive_class_by_its_logit_and_the_negative_by_its_negation(keras):
    model = model_with(keras, ("verdict", 1, "sigmoid"))
    explainer = Explainer(model, labels=["benign", "malignant"], precision="fp32")
    assert explainer.head.kind == "binary" and explainer.labels == ("benign", "malignant")
    batch = images()
    logit = dense_pre_activation(model, "verdict")
    for class_index, sign in ((1, 1.0), (0, -1.0)):
        explained = explainer.explain(batch, classes=class_index)
        expected = gradcam_by_tape(keras, model, batch.astype("float32"), lambda p: sign * logit(p)[:, 0])
        close(np.stack([e.map for e in explained]), expected)
    z = logit(keras.Model(model.input, model.get_layer("pool").output)(batch.astype("float32")).numpy())[:, 0]
    positive = 1 / (1 + np.exp(-z))
    (first, *_) = explainer.predict(batch)
    assert [p.label for p in first.predictions] == (["malignant", "benign"] if positive[0] >= 0.5 else
                                                    ["benign", "malignant"])
    assert first.probabilities == pytest.approx([1 - positive[0], positive[0]], abs=1e-5)
    top = explainer.explain(batch)  # by default the predicted class of each image
    assert [e.class_index for e in top] == [int(p >= 0.5) for p in positive]


def test_a_value_head_explains_the_value_itself_and_counterfactually_what_lowers_it(keras, tmp_path):
    model = model_with(keras, ("age", 1, None))
    batch = images()
    value = dense_pre_activation(model, "age")
    explainer = Explainer(model, precision="fp32")
    assert explainer.head.kind == "value" and explainer.labels == ("age",)
    explained = explainer.explain(batch)
    close(np.stack([e.map for e in explained]), gradcam_by_tape(keras, model, batch.astype("float32"),
                                                                lambda p: value(p)[:, 0]))
    predicted = model.predict(batch.astype("float32"), verbose=0)[:, 0]
    assert [e.target_score for e in explained] == pytest.approx(predicted, rel=1e-4)
    lowers = Explainer(model, precision="fp32", counterfactual=True).explain(batch)
    close(np.stack([e.map for e in lowers]), gradcam_by_tape(keras, model, batch.astype("float32"),
                                                             lambda p: -value(p)[:, 0]))
    path = tmp_path / "age.keras"
    model.save(path)
    Image.fromarray(batch[0]).save(tmp_path / "a.png")
    printed = run("predict", tmp_path / "a.png", "--model", path, "--precision", "fp32")
    assert printed.exit_code == 0, printed.output
    (row,) = [line.split("\t") for line in printed.stdout.splitlines()]
    assert row[:4] == [str(tmp_path / "a.png"), "1", "0", "age"] and float(row[4]) == pytest.approx(predicted[0],
                                                                                                    rel=1e-4)
    as_json = json.loads(run("predict", tmp_path / "a.png", "--model", path, "--json", "--precision", "fp32").stdout)
    assert as_json["predictions"][0]["value"] == pytest.approx(predicted[0], rel=1e-4)


def test_element_k_of_a_vector_output_is_a_value(keras):
    model = model_with(keras, ("box", 4, None))
    batch = images()
    explainer = Explainer(model, output_index=2, precision="fp32")
    assert explainer.head.kind == "value" and explainer.labels == ("box[2]",)
    value = dense_pre_activation(model, "box")
    close(np.stack([e.map for e in explainer.explain(batch)]),
          gradcam_by_tape(keras, model, batch.astype("float32"), lambda p: value(p)[:, 2]))
    with pytest.raises(BadArgument, match=r"4 is not an element of the output \(0 to 3\)"):
        Explainer(model, output_index=4)


def test_a_model_with_several_outputs_is_explained_through_the_one_named(keras, tmp_path):
    model = model_with(keras, ("kind", 3, "softmax"), ("age", 1, None))
    path = tmp_path / "two.keras"
    model.save(path)
    Image.fromarray(images(1)[0]).save(tmp_path / "a.png")
    missing = run("gradcam", tmp_path / "a.png", "--model", path, "-o", tmp_path / "out")
    assert missing.exit_code == 2
    assert "Invalid value for --output: the model has 2 outputs: choose one with --output NAME (kind, age)" in (
        " ".join(missing.stderr.split()))
    unknown = run("predict", tmp_path / "a.png", "--model", path, "--output", "sex")
    assert unknown.exit_code == 2 and "unknown output 'sex'; the model's outputs: kind, age" in unknown.stderr
    listed = run("layers", "--model", path)
    assert listed.exit_code == 0 and "> kind" in listed.stdout and "> age" in listed.stdout
    assert "* second" in listed.stdout
    import tensorflow as tf

    batch = images()
    for name in ("kind", "age"):
        explained = Explainer(model, output=name, precision="fp32").explain(batch)
        chosen = np.array([e.class_index for e in explained])
        head = dense_pre_activation(model, name)
        expected = gradcam_by_tape(keras, model, batch.astype("float32"),
                                   lambda p: tf.gather(head(p), chosen, batch_dims=1))
        close(np.stack([e.map for e in explained]), expected)


def test_several_labels_per_image_are_those_at_the_threshold(keras, tmp_path):
    model = model_with(keras, ("tags", 5, "sigmoid"), seed=8)
    batch = images()
    explainer = Explainer(model, threshold=0.5, precision="fp32")
    probabilities = model.predict(batch.astype("float32"), verbose=0)
    assert explainer.head.kind == "labels"
    explained = explainer.explain(batch)
    expected = [(i, c) for i in range(3) for c in np.argsort(-probabilities[i], kind="stable")
                if probabilities[i, c] >= 0.5]
    assert [(e.source, e.class_index) for e in explained] == expected and expected  # every label above, highest first
    logits = dense_pre_activation(model, "tags")
    for e in explained:
        close(e.map, gradcam_by_tape(keras, model, batch[e.source:e.source + 1].astype("float32"),
                                     lambda p, c=e.class_index: logits(p)[:, c])[0])
    capped = Explainer(model, threshold=0.5, precision="fp32").explain(batch, top_k=1)
    assert [(e.source, e.class_index) for e in capped] == [(i, c) for i, c in expected if
                                                          c == int(np.argmax(probabilities[i]))]
    predicted = [p.class_index for p in explainer.predict(batch[:1])[0].predictions]
    assert predicted == [c for i, c in expected if i == 0]
    path = tmp_path / "tags.keras"
    model.save(path)
    Image.fromarray(batch[0]).save(tmp_path / "a.png")
    result = run("gradcam", tmp_path / "a.png", "--model", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["class_index"] for r in records] == predicted and all(r["multi_label"] for r in records)


def test_logits_read_as_several_labels_with_multi_label(keras):
    model = model_with(keras, ("tags", 5, None), seed=8)
    batch = images()
    plain, several = Explainer(model, precision="fp32"), Explainer(model, multi_label=True, precision="fp32")
    assert plain.head.kind == "classes" and several.head.kind == "labels"
    logits = model.predict(batch.astype("float32"), verbose=0)
    np.testing.assert_allclose(several.predict(batch)[0].probabilities, 1 / (1 + np.exp(-logits[0])), rtol=1e-4)
    with pytest.raises(BadArgument, match="ends in a softmax"):
        Explainer(model_with(keras, ("kind", 3, "softmax")), multi_label=True)


def test_an_output_explain_cannot_read_is_one_line(keras, tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Reshape((16, 64))(x)  # (batch, 16, 64): no classes, no pixels
    path = tmp_path / "odd.keras"
    keras.Model(inputs, outputs).save(path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    result = run("predict", tmp_path / "a.png", "--model", path)
    assert result.exit_code == 1
    assert result.stderr == ("error: explain understands outputs of shape (batch, classes) (a softmax or logits; "
                             "sigmoids for several labels), (batch, 1) (a sigmoid: binary; linear: a value), and "
                             "(batch, height, width, classes) (per pixel: a segmentation); this model's output is "
                             "(None, 16, 64)\n")
    with pytest.raises(ExplainError):
        Explainer(path)
