"""Models of 1, 2, 4 or N input channels, fed pictures of as many: an RGBA PNG, grey with alpha, a .npy array and a
TIFF of six bands (tifffile) are read as they are, not made RGB; Grad-CAM on each equals a full tape's; a picture of
another count is one line naming it and what the model takes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, BadInput, Explainer
from explain_cli.cli.main import cli

SIZE = 24


def model_of(keras, channels: int):
    keras.utils.set_random_seed(channels)
    inputs = keras.Input((SIZE, SIZE, channels))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def full_tape(keras, model, pixels: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM by hand: ReLU(Σ_k mean(∂y_c/∂A_k) A_k) at `features`, y_c the logit."""
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer("features").output, model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        features, logits = probe(pixels[None].astype(np.float32))
        score = logits[0, class_index]
    grads = tape.gradient(score, features)[0].numpy()
    return np.maximum((features[0].numpy() * grads.mean(axis=(0, 1))).sum(-1), 0)


def saved(tmp_path, kind: str, pixels: np.ndarray):
    if kind == "png":
        path = tmp_path / "picture.png"
        Image.fromarray(pixels, "RGBA" if pixels.shape[-1] == 4 else "LA").save(path)
    elif kind == "npy":
        path = tmp_path / "picture.npy"
        np.save(path, pixels)
    else:
        import tifffile

        path = tmp_path / "picture.tif"
        tifffile.imwrite(path, pixels, photometric="minisblack", planarconfig="contig")
    return path


@pytest.mark.parametrize("channels, kind", [(4, "png"), (2, "png"), (4, "npy"), (6, "tif"), (1, "npy")])
def test_a_picture_of_the_models_channels_is_fed_as_it_is(keras, tmp_path, channels, kind):
    pixels = (np.random.default_rng(channels).random((SIZE, SIZE, channels)) * 255).astype(np.uint8)
    pixels[..., -1] = np.clip(pixels[..., -1], 40, 255)  # an alpha that leaves every pixel something
    model = model_of(keras, channels)
    made = Explainer(model, method="gradcam", layer="features", precision="fp32")
    assert made.input_size == (SIZE, SIZE, channels)
    path = saved(tmp_path, kind, pixels if channels > 1 else pixels[..., 0])
    (explained,) = made.explain([path])
    expected = np.asarray(model(pixels[None].astype(np.float32)))[0]
    assert explained.class_index == int(np.argmax(expected))
    assert explained.probability == pytest.approx(float(expected.max()), abs=1e-5)
    assert np.corrcoef(explained.map.ravel(), full_tape(keras, model, pixels, explained.class_index).ravel())[0, 1] \
        >= 0.999
    assert explained.image.shape == (SIZE, SIZE, 3)  # drawn on its first three channels, or its first as grey
    if channels > 4:  # no alpha to show: its first three bands as they are
        assert np.array_equal(explained.image, pixels[..., :3])


def test_a_picture_of_another_count_is_one_line(keras, tmp_path):
    model_path = tmp_path / "four.keras"
    model_of(keras, 4).save(model_path)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(photo)
    with pytest.raises(BadInput, match="has 3 channels \\(RGB\\); the model takes 4"):
        Explainer(model_path).explain([photo])
    result = CliRunner().invoke(cli, ["gradcam", str(photo), "--model", str(model_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert f"error: {photo}: has 3 channels (RGB); the model takes 4: give a picture, .npy or TIFF of 4 channels" \
        in result.stderr.splitlines()


def test_maps_are_drawn_on_the_channels_named(keras, tmp_path):
    pixels = (np.random.default_rng(6).random((SIZE, SIZE, 6)) * 255).astype(np.uint8)
    path = saved(tmp_path, "tif", pixels)
    model = model_of(keras, 6)
    (false_colour,) = Explainer(model, precision="fp32", display_channels=(3, 2, 1)).explain([path])
    assert np.array_equal(false_colour.image, pixels[..., [3, 2, 1]])
    (grey,) = Explainer(model, precision="fp32", display_channels=[5]).explain([path])
    assert np.array_equal(grey.image, np.repeat(pixels[..., 5:6], 3, axis=-1))
    assert np.array_equal(grey.map, false_colour.map)  # what is drawn on changes nothing explained
    with pytest.raises(BadArgument, match="three channel numbers from 0"):
        Explainer(model, display_channels=(1, 2))
    with pytest.raises(BadInput, match="--display-channels 9: the picture has channels 0 to 5"):
        Explainer(model, precision="fp32", display_channels=(9,)).explain([path])


def test_the_command_line_draws_on_the_channels_named(keras, tmp_path):
    model_of(keras, 6).save(tmp_path / "six.keras")
    pixels = (np.random.default_rng(7).random((SIZE, SIZE, 6)) * 255).astype(np.uint8)
    path = saved(tmp_path, "tif", pixels)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(path), "--model", str(tmp_path / "six.keras"), "-o", str(out),
                                      "--display-channels", "3,2,1", "--alpha", "0", "--image-format", "png"])
    assert result.exit_code == 0, result.output
    (overlay,) = out.glob("*.gradcam.*.png")
    assert np.array_equal(np.asarray(Image.open(overlay).convert("RGB")), pixels[..., [3, 2, 1]])
    result = CliRunner().invoke(cli, ["gradcam", str(path), "--model", str(tmp_path / "six.keras"), "-o", str(out),
                                      "--display-channels", "2,1"])
    assert result.exit_code == 2 and "three channel numbers from 0, or one" in result.stderr
