"""The split-model Grad-CAM equals an independent computation: the whole forward pass under one tape.

The reference builds a multi-output model (input -> [layer output, logits]) from separately built
layers where it can, runs it eagerly under a single GradientTape and applies the Grad-CAM formula
in numpy. The product instead cuts the graph, runs the features outside the tape and only the head
under it, in a compiled function. They must agree to ~1e-4 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import cut as split

RELATIVE = 1e-4


def _images(n: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(5)
    smooth = rng.integers(0, 256, size=(n, size // 16, size // 16, 3)).astype(np.uint8)
    return smooth.repeat(16, axis=1).repeat(16, axis=2)  # blocky, so the maps are not flat noise


def _gradcam_reference(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    return np.maximum((weights * activations).sum(axis=-1), 0.0)


def _reference_maps(keras, multi_output, x: np.ndarray, classes: np.ndarray, probability: bool = False):
    """(b, k, h, w) maps, one eager tape over the whole forward pass per explained rank."""
    import tensorflow as tf

    maps = []
    for rank in range(classes.shape[1]):
        with tf.GradientTape() as tape:
            activations, logits = multi_output(x)
            source = tf.nn.softmax(logits) if probability else logits
            score = tf.reduce_sum(tf.gather(source, classes[:, rank], batch_dims=1))
        gradients = tape.gradient(score, activations)
        maps.append(_gradcam_reference(activations.numpy(), gradients.numpy()))
    return np.stack(maps, axis=1), logits.numpy()


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    assert scale > 0, "reference map is all zero: the test would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RELATIVE * scale)


def _explain(model: models.LoadedModel, layer: str, images: np.ndarray, **kwargs):
    # The split itself, against the full tape: BatchNorm folding is checked against the split in test_fold.py.
    cut = split.split(explainer.graph_of(model), layer, fold=False)
    return cut, explainer.compile_explain(model, cut, "gradcam", **kwargs)(images)


BUILT_IN_CASES = [
    ("resnet50", "ResNet50", "conv5_block3_out"),  # the default
    ("resnet50", "ResNet50", "conv4_block6_out"),  # an inner block
    ("resnet50", "ResNet50", "conv5_block3_2_relu"),  # inside a residual block: the skip crosses the cut
    ("vgg16", "VGG16", "block5_conv3"),
    ("vgg16", "VGG16", "block4_conv3"),
]


@pytest.mark.parametrize("name, constructor, layer", BUILT_IN_CASES)
def test_builtin_gradcam_matches_one_tape_reference(name, constructor, layer, keras, request):
    weights = request.getfixturevalue(f"{name}_weights")
    model = models.load(name, weights=str(weights))
    images = _images(2)
    cut, result = _explain(model, layer, images, top_k=2)

    # Reference: the same architecture built again, ending in logits, with the same weights file.
    reference = getattr(keras.applications, constructor)(weights=None, classifier_activation=None)
    reference.load_weights(weights)
    multi = keras.Model(reference.input, [reference.get_layer(layer).output, reference.output])
    x = model.preprocess(images.astype("float32"))
    expected, logits = _reference_maps(keras, multi, x, result.classes)

    np.testing.assert_array_equal(result.classes, np.argsort(-logits, axis=1)[:, :2])
    _assert_close(result.maps, expected)
    np.testing.assert_allclose(result.scores, np.take_along_axis(logits, result.classes, 1), rtol=1e-4)
    if layer == "conv5_block3_2_relu":
        _, skips = cut.features(x)
        assert len(skips) == 1 and tuple(skips[0].shape) == (2, 7, 7, 2048)


def test_named_classes_with_probability_score(resnet50_weights, keras):
    """--class c1 --class c2 --score probability: the same classes for every image, softmax differentiated."""
    model = models.load("resnet50", weights=str(resnet50_weights))
    images = _images(2)
    reference = keras.applications.ResNet50(weights=None, classifier_activation=None)
    reference.load_weights(resnet50_weights)
    multi = keras.Model(reference.input, [reference.get_layer("conv5_block3_out").output, reference.output])
    x = model.preprocess(images.astype("float32"))
    # Classes with a probability large enough that the softmax's gradient does not underflow.
    first, second = (int(c) for c in np.argsort(-multi(x)[1].numpy()[0])[:2])

    _, result = _explain(model, "conv5_block3_out", images, classes=[second, first], score="probability")
    expected, _ = _reference_maps(keras, multi, x, result.classes, probability=True)

    np.testing.assert_array_equal(result.classes, [[second, first], [second, first]])
    _assert_close(result.maps, expected)


@pytest.mark.parametrize("layer", ["conv5_block3_out", "resnet50/conv5_block3_out", "conv4_block6_out"])
def test_nested_backbone_layer_matches_reference(layer, nested_model_file, keras):
    model = models.load(str(nested_model_file))
    images = _images(2)
    _, result = _explain(model, layer, images, top_k=1)

    # Reference: the backbone as a two-output model, then the head computed by hand from its weights.
    import tensorflow as tf

    backbone = model.keras_model.get_layer("resnet50")
    inner = layer.split("/")[-1]
    multi_backbone = keras.Model(backbone.input, [backbone.get_layer(inner).output, backbone.output])
    kernel, bias = (v.numpy() for v in model.keras_model.get_layer("scores").weights)

    def multi(x):
        activations, features = multi_backbone(x)
        return activations, tf.reduce_mean(features, axis=(1, 2)) @ kernel + bias

    expected, logits = _reference_maps(keras, multi, images.astype("float32"), result.classes)
    np.testing.assert_array_equal(result.classes[:, 0], logits.argmax(axis=1))
    _assert_close(result.maps, expected)


def test_split_leaves_the_users_model_unchanged(nested_model_file, keras):
    model = models.load(str(nested_model_file))
    images = _images(1).astype("float32")
    before = model.keras_model(images).numpy()
    split.split(explainer.graph_of(model), "conv5_block3_out")
    after = model.keras_model(images).numpy()
    assert model.keras_model.get_layer("scores").activation.__name__ == "softmax"
    np.testing.assert_allclose(after, before, rtol=1e-6)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=1e-5)  # still probabilities


def test_each_image_in_a_batch_gets_its_own_map(tiny_model):
    """Batching must not mix images: a map computed in a batch equals the map computed alone."""
    model = models.load(str(tiny_model))
    cut = split.split(explainer.graph_of(model), "conv3")
    step = explainer.compile_explain(model, cut, "gradcam", top_k=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    together = step(images)
    for i in range(3):
        alone = step(images[i : i + 1])
        np.testing.assert_allclose(together.maps[i], alone.maps[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(together.classes[i], alone.classes[0])


def test_compiled_steps_trace_once_for_any_batch_size(tiny_model):
    """Full batches and the last partial one run through the same traced graph: no retracing."""
    model = models.load(str(tiny_model))
    graph = explainer.graph_of(model)
    explain = explainer.compile_explain(model, split.split(graph, "conv3"), "gradcam", top_k=2)
    predict = explainer.compile_predict(model, graph)
    images = np.zeros((4, 64, 64, 3), np.uint8)
    for size in (4, 4, 1, 3):
        explain(images[:size])
        predict(images[:size])
    assert explain.traced.experimental_get_tracing_count() == 1
    assert predict.traced.experimental_get_tracing_count() == 1
