"""A subclassed Keras model (its own `call`, no graph) is explained like any other: its layers are cut while it runs.

The checks are independent of that machinery: a forward pass written out by hand under one tape, and the same layer
objects assembled as a Sequential model, whose graph explain replays the ordinary way.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import cut as split
from explain_cli.cli.main import cli

SIZE, CLASSES = 32, 3


def _build_net(keras):
    from keras import layers

    @keras.saving.register_keras_serializable("explain_tests")
    class Net(keras.Model):
        """Rescaling, two convolutions (the second cut in the tests), pooling, Dense with a softmax."""

        def __init__(self, classes: int = CLASSES, named: bool = True, **kwargs):
            super().__init__(**kwargs)
            self.classes, self.named = classes, named
            name = (lambda n: n) if named else (lambda n: None)  # None: Keras names it, differently in a copy
            self.scale = layers.Rescaling(1 / 255, name=name("scale"))
            self.conv1 = layers.Conv2D(8, 3, padding="same", activation="relu", name=name("conv1"))
            self.conv2 = layers.Conv2D(16, 3, padding="same", activation="relu", name=name("conv2"))
            self.pool = layers.GlobalAveragePooling2D(name=name("pool"))
            self.scores = layers.Dense(classes, activation="softmax", name=name("scores"))

        def call(self, x):
            return self.scores(self.pool(self.conv2(self.conv1(self.scale(x)))))

        def get_config(self):
            return {**super().get_config(), "classes": self.classes, "named": self.named}

    return Net


@pytest.fixture(scope="module")
def net_file(keras, tmp_path_factory):
    keras.utils.set_random_seed(12)
    net = _build_net(keras)(name="net")
    net(np.zeros((1, SIZE, SIZE, 3), np.float32))
    path = tmp_path_factory.mktemp("subclassed") / "net.keras"
    net.save(path)
    return path


@pytest.fixture(scope="module")
def net(net_file):
    return models.load(str(net_file))


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.integers(0, 256, (n, SIZE // 4, SIZE // 4, 3)).astype(np.uint8).repeat(4, 1).repeat(4, 2)


def test_its_layers_are_listed_by_path_and_the_last_feature_map_is_the_default(net_file):
    result = CliRunner().invoke(cli, ["layers", "--model", str(net_file)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["  net/scale  (32, 32, 3)", "  net/conv1  (32, 32, 8)",
                                          "* net/conv2  (32, 32, 16)"]


def test_predictions_are_the_models_own_and_its_softmax_is_applied_once(net):
    images = _images()
    probabilities = explainer.compile_predict(net, explainer.graph_of(net))(images)
    np.testing.assert_allclose(probabilities, net.keras_model.predict(images.astype("float32"), verbose=0),
                               atol=1e-6)


def test_gradcam_inside_it_equals_its_forward_pass_written_out_by_hand(net):
    import tensorflow as tf

    images = _images()
    cut = split.split(explainer.graph_of(net), "conv2")
    assert cut.activation == "softmax"  # the class score is the logit, before the Dense's softmax
    result = explainer.compile_explain(net, cut, "gradcam", top_k=2)(images)
    model = net.keras_model
    for rank in range(2):
        with tf.GradientTape() as tape:
            kept = model.conv2(model.conv1(model.scale(tf.constant(images, tf.float32))))
            logits = tf.matmul(model.pool(kept), model.scores.kernel) + model.scores.bias
            score = tf.reduce_sum(tf.gather(logits, result.classes[:, rank], batch_dims=1))
        gradients = tape.gradient(score, kept).numpy()
        weights = gradients.mean(axis=(1, 2), keepdims=True)
        expected = np.maximum((weights * kept.numpy()).sum(axis=-1), 0.0)
        assert expected.max() > 0
        np.testing.assert_allclose(result.maps[:, rank], expected, atol=1e-4 * expected.max())


@pytest.mark.parametrize("method", ["guided-backprop", "guided-gradcam", "vanilla"])
def test_pixel_methods_equal_those_of_the_same_layers_as_a_sequential_model(net, keras, method):
    """Guided backprop guides the ReLUs inside the subclassed model as it does the layers of a graph."""
    model = net.keras_model
    sequential = keras.Sequential([keras.Input((SIZE, SIZE, 3)), model.scale, model.conv1, model.conv2, model.pool,
                                   model.scores])
    twin = models.LoadedModel("sequential", sequential, SIZE, SIZE, 3, lambda x: x, None, net.labels)
    images = _images()
    inside = explainer.compile_saliency(net, explainer.graph_of(net), method, layer="conv2")(images)
    replayed = explainer.compile_saliency(twin, explainer.graph_of(twin), method, layer="conv2")(images)
    assert replayed.maps.max() > 0
    np.testing.assert_allclose(inside.maps, replayed.maps, atol=1e-5 * replayed.maps.max())


def test_it_runs_end_to_end_from_the_command_line(net_file, tmp_path):
    from PIL import Image

    Image.fromarray(_images(1)[0]).resize((64, 64)).save(tmp_path / "a.png")
    result = CliRunner().invoke(cli, ["gradcam", str(tmp_path / "a.png"), "--model", str(net_file), "-o",
                                      str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "net.keras: gradcam at layer net/conv2 (default)" in result.stderr
    assert len(list((tmp_path / "out").glob("a.gradcam.*.jpg"))) == 1


def test_evaluate_sanity_and_activations_work_on_a_model_whose_copy_names_its_layers_anew(keras, tmp_path):
    from PIL import Image

    from explain_cli.io import files as output

    keras.utils.set_random_seed(13)
    net = _build_net(keras)(named=False, name="auto")
    net(np.zeros((1, SIZE, SIZE, 3), np.float32))
    net.save(tmp_path / "auto.keras")
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    run = lambda *args: CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    result = run("evaluate", tmp_path / "a.png", "--model", tmp_path / "auto.keras", "--methods", "gradcam",
                 "--sanity", "--steps", "4", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    # Each load names the layers anew in this process: the run's own names are those it printed.
    layer = re.search(r"at layer (\S+),", result.stderr).group(1)
    stages = [r["deepest_randomised"] for r in output.read_manifest(tmp_path / "out", "sanity.jsonl")]
    assert len(stages) == 3 and stages[1] == layer  # the model's names (dense, then the explained conv), not the copy's
    result = run("activations", tmp_path / "a.png", "--model", tmp_path / "auto.keras", "-o", tmp_path / "act")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "act").glob("a.activations.*.png"))) == 2  # its two convolutions
