"""Pixel attributions against independent computations: finite differences, completeness, numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import cut as split
from explain_cli.cli.main import cli
from explain_cli.methods import PIXEL_METHODS
from explain_cli.methods.saliency import PixelInputs, integrated_gradient_attributions
from tests.synthetic import make_scene
from tests.test_methods import up_to


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = models.load(str(tiny_model))
    return model, explainer.graph_of(model)


@pytest.fixture(scope="module")
def scene():
    return make_scene(np.random.default_rng(8)).image


def logit_of(model: models.LoadedModel):
    """The tiny model's class logits computed eagerly, layer by layer, the Dense applied by hand."""
    net = model.keras_model
    kernel, bias = (v.numpy() for v in net.get_layer("scores").weights)
    pooled = up_to(net, "gap")
    return lambda x: pooled(x).numpy() @ kernel + bias


def test_vanilla_saliency_matches_finite_differences(tiny):
    # Noise, not a flat square: max pooling over equal pixels has no derivative to compare with.
    scene = np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    model, graph = tiny
    result = explainer.compile_saliency(model, graph, "vanilla", layer="conv3")(scene[None])
    cls = int(result.classes[0, 0])
    logits = logit_of(model)
    base = scene.astype(np.float64)
    saliency = result.maps[0, 0]
    strongest = np.argsort(saliency.ravel())[-6:]  # where the map says the score is most sensitive
    for flat in strongest:
        row, col = divmod(int(flat), scene.shape[1])
        slopes = []
        for channel in range(3):
            step = np.zeros_like(base)
            step[row, col, channel] = 0.05
            up = logits((base + step)[None].astype(np.float32))[0, cls]
            down = logits((base - step)[None].astype(np.float32))[0, cls]
            slopes.append(abs(up - down) / 0.1)
        assert max(slopes) == pytest.approx(saliency[row, col], rel=0.05)


def test_integrated_gradients_are_complete(tiny):
    """Σ attributions = S(x) − S(black) within 1 % at 64 steps, on a photo.

    (A flat saturated square converges more slowly: 2.5 % at 64 steps, 0.4 % at 512.)
    """
    import tensorflow as tf

    from pathlib import Path

    cat = Path(__file__).parent.parent / "sample_images" / "cat.jpg"
    scene = np.asarray(Image.open(cat).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    model, graph = tiny
    logits = logit_of(model)
    cls = int(np.argmax(logits(scene[None].astype(np.float32))[0]))
    net_logits, _ = split.logits(graph)

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = net_logits(x)[:, cls]
        return tape.gradient(score, x)

    image = tf.constant(scene[None], tf.float32)
    inputs = PixelInputs(images=image, gradient=gradient, guided_gradient=gradient, gradcam=lambda: None, steps=64)
    total = float(tf.reduce_sum(integrated_gradient_attributions(inputs)))
    expected = float(logits(scene[None].astype(np.float32))[0, cls] - logits(np.zeros_like(scene, np.float32)[None])[0, cls])
    assert abs(expected) > 0.5
    assert total == pytest.approx(expected, rel=0.01)


def test_smoothgrad_without_noise_is_vanilla_and_is_seeded(tiny, scene):
    model, graph = tiny
    vanilla = explainer.compile_saliency(model, graph, "vanilla", layer="conv3")(scene[None]).maps
    quiet = explainer.compile_saliency(model, graph, "smoothgrad", layer="conv3", noise=0.0, samples=3)
    np.testing.assert_allclose(quiet(scene[None]).maps, vanilla, rtol=1e-5, atol=1e-7)
    noisy = explainer.compile_saliency(model, graph, "smoothgrad", layer="conv3", samples=4, seed=3)
    np.testing.assert_array_equal(noisy(scene[None]).maps, noisy(scene[None]).maps)
    assert not np.allclose(noisy(scene[None]).maps, vanilla)


def test_guided_backprop_equals_its_numpy_form_and_leaves_the_model_alone(keras, tmp_path):
    """x → Flatten → Dense(relu) → Dense: guided ∂y_c/∂x = W1 · (w2_c ⊙ [h > 0] ⊙ [w2_c > 0])."""
    keras.utils.set_random_seed(4)
    net = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                            keras.layers.Dense(8, activation="relu", name="hidden"), keras.layers.Dense(3)])
    path = tmp_path / "mlp.keras"
    net.save(path)
    model = models.load(str(path))
    graph = explainer.graph_of(model)
    image = np.random.default_rng(1).integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    result = explainer.compile_saliency(model, graph, "guided-backprop", layer="")(image)

    (w1, b1), (w2, b2) = (layer.get_weights() for layer in model.keras_model.layers[1:])
    x = image.reshape(1, -1).astype(np.float64)
    hidden = x @ w1 + b1
    cls = int(np.argmax(np.maximum(hidden, 0) @ w2 + b2))
    upstream = w2[:, cls] * (hidden[0] > 0) * (w2[:, cls] > 0)
    expected = np.abs((w1 @ upstream).reshape(4, 4, 3)).max(axis=-1)
    np.testing.assert_allclose(result.maps[0, 0], expected, rtol=1e-5, atol=1e-7)
    assert model.keras_model.get_layer("hidden").activation.__name__ == "relu"
    plain = explainer.compile_saliency(model, graph, "vanilla", layer="")(image).maps[0, 0]
    assert not np.allclose(plain, expected)  # the guide changed the backward pass, not the model


def test_every_relu_form_is_guided_against_numpy(keras, tmp_path):
    """ReLU inside Dense, a ReLU layer, ReLU(max_value), relu6 inside Dense, Activation("relu6"), LeakyReLU:
    guided ∂y_c/∂x, backwards: g ← W · (ReLU(g) ⊙ f'(z)) through each layer, z its pre-activation."""
    layers = keras.layers
    relu = (lambda z: np.maximum(z, 0), lambda z: (z > 0) * 1.0)
    capped = (lambda z: np.clip(z, 0, 1.5), lambda z: ((z > 0) & (z < 1.5)) * 1.0)
    six = (lambda z: np.clip(z, 0, 6), lambda z: ((z > 0) & (z < 6)) * 1.0)
    leaky = (lambda z: np.where(z > 0, z, 0.2 * z), lambda z: np.where(z > 0, 1.0, 0.2))
    forms = [  # (the Dense's activation, the layer after it), (f, f') in numpy
        (("relu", None), relu),
        ((None, layers.ReLU()), relu),
        ((None, layers.ReLU(max_value=1.5)), capped),
        (("relu6", None), six),
        ((None, layers.Activation("relu6")), six),
        ((None, layers.LeakyReLU(negative_slope=0.2)), leaky),
    ]
    stack = [keras.Input((4, 4, 3)), layers.Rescaling(1 / 64.0), layers.Flatten()]
    for (activation, after), _ in forms:
        stack += [layers.Dense(64, activation=activation)] + ([after] if after else [])
    stack.append(layers.Dense(3))
    net = keras.Sequential(stack)
    rng = np.random.default_rng(0)  # pre-activations of a few units' size: below 0, in range and past 6
    for layer, std in zip([l for l in net.layers if type(l).__name__ == "Dense"], (0.2, 0.2, 0.2, 1.0, 0.5, 0.2, 0.3)):
        layer.set_weights([rng.normal(0.0, std, layer.kernel.shape), np.zeros(layer.bias.shape)])
    path = tmp_path / "forms.keras"
    net.save(path)
    model = models.load(str(path))
    images = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    result = explainer.compile_saliency(model, explainer.graph_of(model), "guided-backprop", layer="")(images)

    dense = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in model.keras_model.layers
             if type(layer).__name__ == "Dense"]
    seen = []
    for image, guided_map, cls in zip(images, result.maps[:, 0], result.classes[:, 0]):
        h, pre = image.reshape(-1) / 64.0, []
        for (kernel, bias), (_, (f, _)) in zip(dense, forms):
            pre.append(h @ kernel + bias)
            h = f(pre[-1])
        assert int(np.argmax(h @ dense[-1][0] + dense[-1][1])) == cls
        g = dense[-1][0][:, cls]
        for (kernel, _), (_, (_, derivative)), z in reversed(list(zip(dense, forms, pre))):
            g = kernel @ (np.maximum(g, 0) * derivative(z))
        expected = np.abs((g / 64.0).reshape(4, 4, 3)).max(axis=-1)
        assert (expected > 0).mean() > 0.5  # the guided gradient reached most pixels
        np.testing.assert_allclose(guided_map, expected, rtol=1e-4, atol=1e-6 * expected.max())
        seen.append(pre)
    for form, cap in ((2, 1.5), (3, 6), (4, 6)):  # each capped form was met below 0, in its range and past it
        z = np.concatenate([pre[form] for pre in seen])
        assert (z < 0).any() and ((z > 0) & (z < cap)).any() and (z > cap).any(), (form, z)


def test_mobilenet_v2_relu6_layers_are_all_guided(keras):
    from explain_cli.model.graph import flatten
    from explain_cli.model.guided import guided as guide

    net = keras.applications.MobileNetV2(weights=None)
    graph = flatten(net)
    relu6 = [s.name for s in graph.steps if type(s.layer).__name__ == "ReLU" and s.layer.max_value == 6]
    guided = guide(graph)
    still_plain = [s.name for s in guided.steps if type(s.layer).__name__ in ("ReLU", "LeakyReLU")]
    assert len(relu6) == 35 and still_plain == []


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(tiny, scene):
    import tensorflow as tf


    model, graph = tiny
    guided = explainer.compile_saliency(model, graph, "guided-backprop", layer="conv3")(scene[None]).maps[0, 0]
    combined = explainer.compile_saliency(model, graph, "guided-gradcam", layer="conv3")(scene[None]).maps[0, 0]
    cam = explainer.compile_explain(model, split.split(graph, "conv3"), "gradcam")(scene[None]).maps[0, 0]
    up = tf.image.resize(cam[None, ..., None], (64, 64), method="bilinear").numpy()[0, ..., 0]
    np.testing.assert_allclose(combined, guided * up / up.max(), rtol=1e-4, atol=1e-6 * combined.max())


@pytest.mark.parametrize("method", sorted(PIXEL_METHODS))
def test_every_pixel_method_runs_from_the_cli(method, tiny_model, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["saliency", str(photo_tree / "a.png"), "--method", method, "--model",
                                      str(tiny_model), "-o", str(out), "--samples", "2", "--steps", "8"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["method"] == method and record["map"] == record["overlay"].replace(".jpg", ".map.png")
    grey = Image.open(out / record["map"])
    assert grey.mode == "L" and grey.size == (64, 64)  # the model's input resolution
    assert Image.open(out / record["overlay"]).size == (96, 80)  # the photo's own
