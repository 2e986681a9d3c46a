"""Keras models that hold images channels-first, (batch, channels, height, width): one built with
`data_format="channels_first"` throughout, and one that moves the channels at its ends (the tests' trained segmenter
as one sigmoid channel, NCHW in and out). Each is explained as its channels-last twin with the same weights is:
the same predictions, and Grad-CAM maps equal to the twin's (which tests/test_gradcam.py holds to a full tape)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli import Explainer
from explain_cli.cli.main import cli
from tests.synthetic import make_colour_blobs, one_channel

SIZE = 32


def twins(keras, segmenter: bool):
    """A small network in both layouts, the channels-first one's weights copied into the channels-last one (Keras
    keeps a kernel (kh, kw, in, out) in either)."""

    def build(first: bool):
        fmt = "channels_first" if first else "channels_last"
        axis = 1 if first else -1
        inputs = keras.Input((3, SIZE, SIZE) if first else (SIZE, SIZE, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", data_format=fmt, name="conv1")(inputs)
        x = keras.layers.BatchNormalization(axis=axis, name="norm")(x)
        x = keras.layers.MaxPooling2D(2, data_format=fmt, name="pool")(x)
        x = keras.layers.Conv2D(4, 1, data_format=fmt, name="conv2")(x)
        if segmenter:
            x = keras.layers.UpSampling2D(2, data_format=fmt, name="up")(x)
            x = keras.layers.Softmax(axis=axis, name="classes")(x)
        else:
            x = keras.layers.GlobalAveragePooling2D(data_format=fmt, name="gap")(x)
            x = keras.layers.Dense(5, activation="softmax", name="classes")(x)
        return keras.Model(inputs, x, name="nchw" if first else "nhwc")

    keras.utils.set_random_seed(5)
    first, last = build(True), build(False)
    rng = np.random.default_rng(5)  # statistics that are not the identity, so a wrong BatchNorm axis would show
    norm = first.get_layer("norm")
    norm.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8), rng.uniform(0.5, 2, 8)])
    last.set_weights(first.get_weights())
    return first, last


@pytest.fixture(scope="module")
def images():
    return (np.random.default_rng(3).random((3, SIZE, SIZE, 3)) * 255).astype(np.uint8)


def correlation(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("segmenter", [False, True], ids=["classifier", "segmenter"])
@pytest.mark.parametrize("layer", ["conv1", "pool"])
def test_a_channels_first_model_is_explained_as_its_channels_last_twin(keras, images, segmenter, layer):
    first, last = twins(keras, segmenter)
    options = dict(preprocess="none", method="gradcam", layer=layer, precision="fp32")
    ours, theirs = Explainer(first, **options), Explainer(last, **options)
    assert ours.input_size == theirs.input_size == (SIZE, SIZE, 3)
    assert ours.head.kind == theirs.head.kind == ("pixels" if segmenter else "classes")
    for a, b in zip(ours.predict(images), theirs.predict(images)):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    mine, twin = ours.explain(images, top_k=2), theirs.explain(images, top_k=2)
    assert [e.class_index for e in mine] == [e.class_index for e in twin]
    for a, b in zip(mine, twin):
        assert a.map.shape == b.map.shape == ((SIZE, SIZE) if layer == "conv1" else (SIZE // 2, SIZE // 2))
        assert correlation(a.map, b.map) >= 0.9999


def test_its_layers_are_listed_as_height_width_channels(keras):
    first, _ = twins(keras, segmenter=True)
    shapes = {layer.name: layer.shape for layer in Explainer(first, preprocess="none").layers()}
    assert shapes["conv1"] == (SIZE, SIZE, 8) and shapes["pool"] == (SIZE // 2, SIZE // 2, 8)


def test_a_keras_segmenter_of_one_sigmoid_channel_in_nchw_is_its_nhwc_original(keras, segmenter_model, tmp_path):
    """NCHW in and out, the channels moved by transposes at the model's ends, the sigmoid before the last one."""
    last, first = tmp_path / "nhwc.keras", tmp_path / "nchw.keras"
    one_channel(keras, segmenter_model).save(last)
    one_channel(keras, segmenter_model, channels_first=True).save(first)
    images = np.stack([make_colour_blobs(np.random.default_rng(s)).image for s in (1, 2)])
    options = dict(method="gradcam", layer="up2_relu", precision="fp32", labels=("background", "blob"))
    ours, theirs = Explainer(first, **options), Explainer(last, **options)
    assert ours.head.kind == "pixels" and ours.head.classes == 2 and ours.head.activation == "sigmoid"
    for a, b in zip(ours.predict(images), theirs.predict(images)):
        assert np.array_equal(a.class_map, b.class_map)
    for a, b in zip(ours.explain(images), theirs.explain(images)):
        assert (a.class_index, a.layer) == (b.class_index, b.layer)
        assert correlation(a.map, b.map) >= 0.9999

    picture = tmp_path / "blobs.png"
    from PIL import Image

    Image.fromarray(images[0]).save(picture)
    printed = [CliRunner().invoke(cli, ["segment", str(picture), "--model", str(model), "-o", str(tmp_path / name),
                                        "--layer", "up2_relu"], catch_exceptions=False)
               for name, model in (("first", first), ("last", last))]
    assert printed[0].exit_code == 0, printed[0].output
    assert printed[0].stdout == printed[1].stdout and printed[0].stdout.count("\n") == 2
