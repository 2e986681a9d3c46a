"""An array means what `model.predict` means: a float array is the model's input as it stands, a uint8 array, a PIL
image or a file is a picture, preprocessed. And how pictures are preprocessed: a named mode, "unit" (x / 255), or a
function of the user's."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, BadInput, Explainer
from explain_cli.cli.main import cli
from tests.test_gradcam_correctness import _assert_close, _reference_maps

SIZE = 32


def scaled_model(keras):
    """A classifier trained, as Keras 2-era models and many exports were, on inputs scaled outside it: no Rescaling
    layer, a softmax at the end."""
    keras.utils.set_random_seed(31)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="last")(x)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Activation("softmax", name="softmax")(logits), name="scaled")


@pytest.fixture(scope="module")
def model(keras):
    return scaled_model(keras)


# Batches as users hand them over: x / 255, x / 127.5 - 1, and caffe's BGR less the ImageNet means.
RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0), "caffe": (-123.68, 151.061)}


def batch(kind: str, n: int = 3, seed: int = 0) -> np.ndarray:
    low, high = RANGES[kind]
    blocks = np.random.default_rng(seed).uniform(low, high, (n, SIZE // 4, SIZE // 4, 3))
    return blocks.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)


@pytest.mark.parametrize("kind", list(RANGES))
def test_a_float_batch_is_the_models_input_as_it_stands(model, keras, kind):
    x = batch(kind)
    explainer = Explainer(model, precision="fp32", layer="last")
    predicted = np.stack([p.probabilities for p in explainer.predict(x)])
    np.testing.assert_allclose(predicted, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    explained = explainer.explain(x, top_k=2)
    classes = np.array([[e.class_index for e in explained[2 * i:2 * i + 2]] for i in range(len(x))])
    reference = keras.Model(model.input, [model.get_layer("last").output, model.get_layer("logits").output])
    expected, _ = _reference_maps(keras, reference, x, classes)
    for i, e in enumerate(explained):
        _assert_close(e.map, expected[i // 2, i % 2])
    # drawn from the array itself, its range stretched to 0-255
    shown = (x[0] - x[0].min()) * (255.0 / (x[0].max() - x[0].min()))
    np.testing.assert_array_equal(explained[0].image, np.rint(shown).astype(np.uint8))


def test_perturbation_methods_and_evaluate_run_on_the_models_input(model):
    x = batch("symmetric", 2)
    probability = model.predict(x, verbose=0)
    for method in ("rise", "occlusion", "smoothgrad", "integrated-gradients"):
        (e,) = Explainer(model, method=method, precision="fp32", masks=64).explain(x[:1])
        assert e.map.shape == (SIZE, SIZE) and np.isfinite(e.map).all() and e.map.max() > 0, method
        assert e.probability == pytest.approx(float(probability[0].max()), rel=1e-5)
    evaluation = Explainer(model, precision="fp32").evaluate(x, steps=4)
    unperturbed = [r for r in evaluation.records if r["method"] == "gradcam"]
    assert [r["deletion_curve"][0] for r in unperturbed] == pytest.approx(probability.max(axis=1), rel=1e-5)
    # the deletion curve ends at the input's 0, the insertion curve at the input itself
    zero = model.predict(np.zeros_like(x[:1]), verbose=0)[0]
    assert unperturbed[0]["deletion_curve"][-1] == pytest.approx(float(zero[unperturbed[0]["class_index"]]), rel=1e-5)


def test_pictures_and_inputs_mix_in_one_call_in_their_order(model):
    rng = np.random.default_rng(3)
    pictures = rng.integers(0, 256, (2, 48, 40, 3)).astype(np.uint8)
    x = batch("unit", 2)
    explained = Explainer(model, precision="fp32", preprocess="unit").explain([pictures[0], x[0], x[1], pictures[1]])
    assert [e.source for e in explained] == [0, 1, 2, 3]
    assert [e.image.shape for e in explained] == [(48, 40, 3), (SIZE, SIZE, 3), (SIZE, SIZE, 3), (48, 40, 3)]
    assert explained[1].probability == pytest.approx(float(model.predict(x[:1], verbose=0)[0].max()), rel=1e-5)


def test_pictures_given_beside_the_arrays_are_drawn_on(model):
    x = batch("caffe", 2)
    shown = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    explained = Explainer(model, precision="fp32").explain(x, pictures=shown)
    np.testing.assert_array_equal(explained[1].image, shown[1])
    assert explained[1].overlay().size == (64, 64)
    with pytest.raises(BadArgument, match=r"^no picture for image 1: give one picture per image, in their order$"):
        Explainer(model, precision="fp32").explain(x, pictures=shown[:1])


def test_arrays_pixels_reads_floats_as_pictures_and_input_reads_uint8_as_the_input(model):
    pictures = np.random.default_rng(6).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    as_uint8 = Explainer(model, precision="fp32", preprocess="unit").predict(pictures)
    as_floats = Explainer(model, precision="fp32", preprocess="unit", arrays="pixels").predict(
        pictures.astype(np.float32))
    np.testing.assert_allclose([p.probabilities for p in as_floats], [p.probabilities for p in as_uint8], rtol=1e-6)
    raw = Explainer(model, precision="fp32", arrays="input").predict(pictures)
    np.testing.assert_allclose([p.probabilities for p in raw], model.predict(pictures.astype(np.float32), verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_an_input_of_another_shape_is_refused_in_one_line(model):
    explainer = Explainer(model, precision="fp32")
    with pytest.raises(BadInput, match=r"^0: an array given as the model's input is its input's shape, 32×32×3, "
                                       r"not 40×32×3; give pixels \(uint8, a PIL image or a file\) to have it resized "
                                       r"and preprocessed$"):
        explainer.explain(np.zeros((40, 32, 3), np.float32))
    good = batch("unit", 1)[0]
    skipped = explainer.explain([np.zeros((8, 8, 3), np.float32), good], errors="skip")
    assert [e.source for e in skipped] == [1]


def test_unit_and_a_function_scale_pictures_as_the_model_was_trained(model):
    pictures = np.random.default_rng(8).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    expected = model.predict(pictures.astype(np.float32) / 255.0, verbose=0)
    for preprocess in ("unit", lambda x: x / 255.0):
        got = Explainer(model, precision="fp32", preprocess=preprocess).predict(pictures)
        np.testing.assert_allclose([p.probabilities for p in got], expected, rtol=1e-5, atol=1e-6)


def test_an_unknown_preprocessing_is_refused_when_the_explainer_is_made(model):
    with pytest.raises(BadArgument, match=r"^preprocess is one of caffe, tf, torch, unit, none or a function "
                                          r"\(pixels 0-255 -> the model's input\), not 'bogus'$") as caught:
        Explainer(model, preprocess="bogus")
    assert caught.value.option == "--preprocess"


def test_the_command_line_scales_by_255_with_preprocess_unit(model, tmp_path):
    path = tmp_path / "scaled.keras"
    model.save(path)
    picture = np.random.default_rng(9).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "x.png")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "x.png"), "--model", str(path), "--preprocess", "unit",
                                      "--precision", "fp32", "--top", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    expected = model.predict(picture[None].astype(np.float32) / 255.0, verbose=0)[0]
    assert {int(row[2]): float(row[4]) for row in rows} == pytest.approx(
        {c: float(expected[c]) for c in range(3)}, abs=1e-5)
