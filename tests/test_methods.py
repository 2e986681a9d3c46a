"""Every class-activation method against an independent computation, on the tiny trained model.

The reference takes A = conv3's output and G = ∂logit_c/∂A from one eager tape over the whole
model, then applies each paper's formula in numpy; the product computes them in the compiled
explain step from the split model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import cut as split
from explain_cli.cli.main import cli
from explain_cli.errors import ExplainError
from explain_cli.methods import METHODS
from tests.synthetic import make_scene

LAYER = "conv3"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = models.load(str(tiny_model))
    return model, split.split(explainer.graph_of(model), LAYER)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(31)
    return np.stack([make_scene(rng).image for _ in range(3)])


@pytest.fixture(scope="module")
def reference(tiny, scenes):
    """A, G and the logits from one tape over the whole model (its Dense applied by hand, pre-softmax)."""
    import tensorflow as tf

    model, _ = tiny
    net = model.keras_model
    to_features = up_to(net, LAYER)
    kernel, bias = (v.numpy() for v in net.get_layer("scores").weights)
    with tf.GradientTape() as tape:
        a = to_features(tf.constant(scenes, tf.float32))
        logits = tf.reduce_mean(a, axis=(1, 2)) @ kernel + bias
        classes = tf.argmax(logits, axis=1, output_type=tf.int32)
        score = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    g = tape.gradient(score, a)
    return a.numpy(), g.numpy(), classes.numpy(), kernel


def up_to(net, name: str):
    """The Sequential model's layers called one by one, eagerly, up to and including `name`."""

    def run(x):
        for layer in net.layers:
            x = layer(x)
            if layer.name == name:
                return x
        raise KeyError(name)

    return run


def relu(x):
    return np.maximum(x, 0.0)


def numpy_maps(name: str, a: np.ndarray, g: np.ndarray, classes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each paper's formula, written again in numpy."""
    if name == "gradcam":
        return relu(np.einsum("nk,nhwk->nhw", g.mean(axis=(1, 2)), a))
    if name == "gradcam-counterfactual":
        return relu(np.einsum("nk,nhwk->nhw", (-g).mean(axis=(1, 2)), a))
    if name == "gradcam++":
        g2, g3 = g**2, g**3
        denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
        return relu(np.einsum("nk,nhwk->nhw", (alpha * relu(g)).sum(axis=(1, 2)), a))
    if name == "xgradcam":
        share = a / np.where(a.sum(axis=(1, 2), keepdims=True) == 0, 1, a.sum(axis=(1, 2), keepdims=True))
        return relu(np.einsum("nk,nhwk->nhw", (share * g).sum(axis=(1, 2)), a))
    if name == "hirescam":
        return relu((g * a).sum(axis=-1))
    if name == "layercam":
        return relu((relu(g) * a).sum(axis=-1))
    if name == "cam":
        return relu(np.einsum("kn,nhwk->nhw", kernel[:, classes], a))
    if name == "eigencam":
        maps = []
        for image in a:
            flat = image.reshape(-1, image.shape[-1])
            projection = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
            total = flat.sum(axis=1)
            if np.dot(projection - projection.mean(), total - total.mean()) < 0:
                projection = -projection
            maps.append(relu(projection).reshape(image.shape[:2]))
        return np.stack(maps)
    raise KeyError(name)


@pytest.mark.parametrize(
    "method, counterfactual",
    [("gradcam", False), ("gradcam", True), ("gradcam++", False), ("xgradcam", False), ("hirescam", False),
     ("layercam", False), ("cam", False), ("eigencam", False)],
)
def test_method_matches_its_formula_in_numpy(method, counterfactual, tiny, scenes, reference):
    model, cut = tiny
    a, g, classes, kernel = reference
    result = explainer.compile_explain(model, cut, method, counterfactual=counterfactual)(scenes)
    np.testing.assert_array_equal(result.classes[:, 0], classes)
    name = f"{method}-counterfactual" if counterfactual else method
    expected = numpy_maps(name, a, g, classes, kernel)
    actual = result.maps[:, 0]
    assert expected.max() > 0, "the reference map is empty: the test would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5 * expected.max())


def test_cam_is_gradcam_up_to_a_positive_scale_for_a_gap_dense_head(tiny, scenes):
    """For GAP → Dense, ∂y_c/∂A^k_ij = w^c_k / (h·w): Grad-CAM = CAM / (h·w)."""
    model, cut = tiny
    grad = explainer.compile_explain(model, cut, "gradcam", top_k=2)(scenes).maps
    cam = explainer.compile_explain(model, cut, "cam", top_k=2)(scenes).maps
    np.testing.assert_allclose(grad * 16 * 16, cam, rtol=1e-4, atol=1e-6 * cam.max())


def test_hirescam_equals_gradcam_when_the_gradient_is_spatially_constant(tiny, scenes):
    model, cut = tiny
    grad = explainer.compile_explain(model, cut, "gradcam")(scenes).maps
    hires = explainer.compile_explain(model, cut, "hirescam")(scenes).maps
    np.testing.assert_allclose(hires, grad, rtol=1e-4, atol=1e-6 * grad.max())


def test_scorecam_matches_masked_forward_passes(tiny, scenes):
    """Score-CAM against a plain loop: upsample each strong channel, normalise, mask, predict, softmax."""
    import tensorflow as tf

    model, cut = tiny
    result = explainer.compile_explain(model, cut, "scorecam", max_masks=5)(scenes)
    net = model.keras_model
    to_features = up_to(net, LAYER)
    kernel, bias = (v.numpy() for v in net.get_layer("scores").weights)
    to_pooled = up_to(net, "gap")
    for image, cls, actual in zip(scenes.astype(np.float32), result.classes[:, 0], result.maps[:, 0]):
        a = to_features(image[None]).numpy()[0]
        strongest = np.argsort(-a.mean(axis=(0, 1)), kind="stable")[:5]
        scores = []
        for channel in strongest:
            mask = tf.image.resize(a[None, :, :, channel : channel + 1], (64, 64), method="bilinear").numpy()[0, ..., 0]
            mask = (mask - mask.min()) / (mask.max() - mask.min() or 1.0)
            logits = to_pooled((image * mask[..., None])[None]).numpy() @ kernel + bias
            scores.append(logits[0, cls])
        weights = np.exp(scores - np.max(scores))
        weights /= weights.sum()
        expected = relu(np.einsum("k,hwk->hw", weights, a[..., strongest]))
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_cam_refuses_a_head_that_is_not_pooling_then_dense(tiny_model):
    model = models.load(str(tiny_model))
    cut = split.split(explainer.graph_of(model), "conv2")
    with pytest.raises(ExplainError, match=r"after conv2 this model has: MaxPooling2D → Conv2D → "
                                           r"GlobalAveragePooling2D → Dense\. Use gradcam"):
        explainer.compile_explain(model, cut, "cam")


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].attention))  # ViTs: test_transformers
def test_every_method_runs_from_the_cli(method, tiny_model, tiny_labels, photo_tree, tmp_path):
    out = tmp_path / "out"
    args = ["cam", str(photo_tree / "b.jpg"), "--method", method, "--model", str(tiny_model), "--labels",
            str(tiny_labels), "-o", str(out), "--max-masks", "4"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["method"] == method
    assert record["overlay"] == f"b.{method}.{record['class_index']}-{record['label']}.jpg"
    assert (out / record["overlay"]).is_file()


def test_counterfactual_outputs_are_named_apart(tiny_model, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(photo_tree / "b.jpg"), "--counterfactual", "--model",
                                      str(tiny_model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["method"] == "gradcam-counterfactual" and ".gradcam-counterfactual." in record["overlay"]


def test_counterfactual_needs_a_gradient_method(tiny_model, photo_tree):
    result = CliRunner().invoke(cli, ["cam", str(photo_tree), "--method", "eigencam", "--counterfactual",
                                      "--model", str(tiny_model)])
    assert result.exit_code == 2 and "eigencam uses no gradients to negate" in result.stderr
