"""Models whose input size is free (Input((None, None, 3))): fully convolutional classifiers, and keras-hub's image
classifiers, whose backbones are built so. explain feeds them at --input-size HEIGHTxWIDTH (input_size= in Python),
else at the size a keras-hub image converter saved with the model resizes to; a model that says neither is a one-line
usage error naming the option. Maps equal a full tape at that size."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli import BadArgument, Explainer
from explain_cli.model import runtime as offload
from explain_cli.cli.main import cli
from tests.test_api import photos
from tests.test_gradcam_correctness import _reference_maps

RUNTIMES = ["tensorflow"] + (["openvino"] if offload.installed("openvino") else [])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def free_model(keras):
    """A fully convolutional classifier: any height and width, Rescaling inside, logits then softmax."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(x)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="second")(x)
    logits = keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits), name="free")


@pytest.fixture(scope="module")
def free_file(keras, tmp_path_factory):
    path = tmp_path_factory.mktemp("free") / "free.keras"
    free_model(keras).save(path)
    return path


@pytest.fixture(scope="module")
def images():
    return photos(2, size=(40, 56))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_free_size_model_is_fed_at_the_size_given_and_its_maps_equal_a_full_tape(runtime, keras, free_file, images):
    explainer = Explainer(free_file, input_size=(40, 56), precision="fp32", runtime=runtime)
    assert explainer.input_size == (40, 56, 3) and explainer.layer == "second"
    model = keras.models.load_model(free_file)
    multi = keras.Model(model.input, [model.get_layer("second").output, model.get_layer("logits").output])
    explained = explainer.explain(images, top_k=2)
    classes = np.array([[e.class_index for e in explained[i * 2:(i + 1) * 2]] for i in range(2)])
    expected, logits = _reference_maps(keras, multi, images.astype("float32"), classes)
    assert expected.shape[2:] == (20, 28)  # computed at 40 × 56, not at some other size
    np.testing.assert_array_equal(classes, np.argsort(-logits, axis=1, kind="stable")[:, :2])
    maps = np.stack([[e.map for e in explained[i * 2:(i + 1) * 2]] for i in range(2)])
    np.testing.assert_allclose(maps, expected, atol=1e-4 * np.abs(expected).max())


def test_images_of_any_size_are_resized_to_the_size_given_on_the_command_line(free_file, tmp_path):
    from PIL import Image

    for name, size in (("wide.png", (96, 32)), ("tall.png", (16, 72))):
        Image.fromarray(photos(1, size=(size[1], size[0]))[0]).save(tmp_path / name)
    out = tmp_path / "out"
    done = run("gradcam", tmp_path / "wide.png", tmp_path / "tall.png", "--model", free_file, "--input-size", "40x56",
               "-o", out, "--top", "1")
    assert done.exit_code == 0 and "2 of 2 images done" in done.output, done.output
    assert {p.name.split(".")[0]: Image.open(p).size for p in out.glob("*.jpg")} == {"wide": (96, 32), "tall": (16, 72)}


def test_without_a_size_the_error_names_the_option(keras, free_file):
    done = run("gradcam", free_file, "--model", free_file)
    assert done.exit_code == 2
    assert done.output.splitlines()[-1] == (f"Error: Invalid value for --input-size: {free_file}: the model's input "
                                            "has no fixed height and width; give --input-size HEIGHTxWIDTH")
    with pytest.raises(BadArgument, match="free: the model's input has no fixed height and width"):
        Explainer(free_model(keras))  # in memory alike


def test_a_size_other_than_a_fixed_inputs_is_refused(tmp_path, keras):
    from tests.test_api import small_model

    path = tmp_path / "small.keras"
    small_model(keras).save(path)
    done = run("predict", path, "--model", path, "--input-size", "32x32")
    assert done.exit_code == 2
    assert done.output.splitlines()[-1] == f"Error: Invalid value for --input-size: {path} takes 40×48 images, not 32×32"
    assert Explainer(path, input_size=[40, 48]).input_size == (40, 48, 3)  # the same size is no contradiction


def test_a_side_the_model_fixes_must_be_the_size_givens(keras):
    """A text-line model: 32 pixels high, any width."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((32, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)), name="line")
    with pytest.raises(BadArgument, match=r"^line takes 32×any images, not 40×96$"):
        Explainer(model, input_size=(40, 96))
    assert Explainer(model, input_size=(32, 96)).input_size == (32, 96, 3)


def hub_resnet(keras_hub, keras):
    """keras-hub's ResNet image classifier as keras-hub builds it (its backbone takes any size), with the preprocessor
    whose image converter resizes to 48 × 40 and scales by 1/255."""
    keras.utils.set_random_seed(6)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block", use_pre_activation=False,
        image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(48, 40), scale=1 / 255.0)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=3,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter))


@pytest.fixture(scope="module")
def hub_classifier(keras, tmp_path_factory):
    """keras-hub's ResNet image classifier as keras-hub builds it (its backbone takes any size), saved with the
    preprocessor whose image converter resizes to 48 × 40 and scales by 1/255."""
    keras_hub = pytest.importorskip("keras_hub")
    path = tmp_path_factory.mktemp("hub") / "hub_resnet.keras"
    hub_resnet(keras_hub, keras).save(path)
    return path


def test_a_keras_hub_classifier_is_fed_at_its_image_converters_size(hub_classifier, keras, tmp_path):
    import tensorflow as tf

    explainer = Explainer(hub_classifier, precision="fp32", runtime="tensorflow")
    assert explainer.input_size == (48, 40, 3)
    images = photos(2, size=(48, 40))
    explained = explainer.explain(images, top_k=1)
    classifier = keras.models.load_model(hub_classifier, compile=False)
    x = tf.constant(images.astype("float32") / 255.0)  # the converter's scale, by hand
    with tf.GradientTape() as tape:  # the whole pass under one tape: backbone, then the classifier's own head
        features = classifier.backbone(x)
        logits = classifier.output_dense(classifier.pooler(features))
        score = tf.reduce_sum(tf.gather(logits, [e.class_index for e in explained], batch_dims=1))
    gradients = tape.gradient(score, features).numpy()
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    expected = np.maximum((weights * features.numpy()).sum(axis=-1), 0.0)
    assert [e.class_index for e in explained] == list(np.argmax(logits.numpy(), axis=1))
    maps = np.stack([e.map for e in explained])
    assert maps.shape == expected.shape and expected.shape[1] != expected.shape[2]  # at 48 × 40, not square
    np.testing.assert_allclose(maps, expected, atol=1e-4 * np.abs(expected).max())
    done = run("gradcam", *_saved(images, tmp_path), "--model", hub_classifier, "-o", tmp_path / "out", "--top", "1")
    assert done.exit_code == 0 and "2 of 2 images done" in done.output, done.output
    other = run("predict", *_saved(images, tmp_path), "--model", hub_classifier, "--input-size", "32x32")
    assert other.exit_code == 2 and other.output.splitlines()[-1] == (  # the converter would resize them back
        f"Error: Invalid value for --input-size: {hub_classifier}: its image converter resizes images to 48×40, not "
        "32×32")


def _saved(images, folder):
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_a_fully_convolutional_segmenter_is_fed_at_the_size_given(keras, tmp_path):
    from tests.test_segment import close, seg_gradcam_by_tape

    keras.utils.set_random_seed(9)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    logits = keras.layers.Conv2D(3, 1, name="logits")(features)
    path = tmp_path / "fcn.keras"
    keras.Model(inputs, keras.layers.Softmax(name="pixels")(logits)).save(path)
    explainer = Explainer(path, input_size=(32, 48), precision="fp32", runtime="tensorflow")
    assert explainer.head.kind == "pixels" and explainer.input_size == (32, 48, 3)
    images = photos(1, size=(32, 48))
    model = keras.models.load_model(path)
    multi = keras.Model(model.input, [model.get_layer("features").output, model.get_layer("logits").output])
    explained = explainer.explain(images, top_k=2)
    assert len(explained) == 2
    for e in explained:
        assert e.map.shape == (32, 48)
        close(e.map, seg_gradcam_by_tape(keras, multi, images, [e.class_index])[0])
