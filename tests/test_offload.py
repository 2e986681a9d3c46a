"""--runtime: the forward-only passes (the feature pass before the cut, predictions, perturbed images) on OpenVINO or ONNX
Runtime, with the same maps as TensorFlow alone; converted once and cached on disk; TensorFlow where they cannot go."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import Explainer
from explain_cli.model import runtime as offload
from explain_cli.cli.main import cli
from explain_cli.errors import ExplainError
from explain_cli.methods import METHODS
from explain_cli.steps.targets import ClassChoice

if not offload.installed("openvino"):
    if os.environ.get("CI"):
        raise ImportError("CI installs the OpenVINO extra: its tests must run there")
    pytest.skip("the OpenVINO extra is not installed: pip install -e '.[test,openvino]'", allow_module_level=True)

CLASS_ACTIVATION = tuple(m for m in METHODS if not METHODS[m].attention)  # attention rollout runs no cut
# Every method sees only the activations, the gradients and (Score-CAM) the forward passes of the same cut: every
# method on ResNet50 and on the user's model whose skip crosses the cut; elsewhere the feature pass itself (A and the
# skips), a gradient method and the forward-pass one.
SOME = ("gradcam", "scorecam")
BUILT_IN = [("resnet50", "ResNet50", None, CLASS_ACTIVATION), ("vgg16", "VGG16", None, SOME),
            ("mobilenet_v2", "MobileNetV2", None, SOME), ("efficientnet_b0", "EfficientNetB0", None, SOME),
            ("densenet121", "DenseNet121", None, SOME), ("resnet50", "ResNet50", "conv5_block3_2_relu", SOME)]


def _weights(keras, constructor, tmp_path_factory):
    path = tmp_path_factory.mktemp(constructor) / f"{constructor}.weights.h5"
    keras.utils.set_random_seed(5)
    model = getattr(keras.applications, constructor)(weights=None)
    if constructor == "EfficientNetB0":  # at random its activations vanish (1e-5 at the top): maps all zero
        _calibrated(keras, model)
    model.save_weights(path)
    return str(path)


def _calibrated(keras, model):
    """Every BatchNormalization's moving statistics made those of a batch of images, in one pass in training mode,
    and its scale and offset drawn at random, as training leaves them: channels of equal means would tie where
    Score-CAM picks the strongest."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(np.stack(_images(8, 224, seed=9)).astype(np.float32), training=True)
    rng = np.random.default_rng(6)
    for layer in norms:
        gamma, beta, mean, variance = layer.get_weights()
        # a channel nearly constant on 8 images is not scaled up by 30 (1/√eps): its rounding noise would be too,
        # and grow through 16 blocks into the maps
        variance = np.maximum(variance, np.median(variance))
        layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0.0, 0.5, beta.shape), mean, variance])


@pytest.fixture(scope="module")
def skip_model(keras, tmp_path_factory):
    """A user's model whose skip connection crosses the cut at "b": Add(a, b) needs a, made before it."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(x)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b")(a)
    x = keras.layers.BatchNormalization(name="norm")(keras.layers.Add(name="skip")([a, b]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    path = tmp_path_factory.mktemp("skip") / "skip.keras"
    keras.Model(inputs, outputs).save(path)
    return str(path)


def _images(n, size, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def _results(explainer, images, methods):
    """Each method's maps of every image's top two classes; the feature pass; the probabilities."""
    import tensorflow as tf

    choice = ClassChoice(top_k=2)
    maps = {}
    for method in methods:
        try:
            maps[method] = explainer.compute(choice, method)(np.stack(images), [])
        except ExplainError as error:  # cam, where the head is not pooling then Dense: said alike by both
            maps[method] = str(error)
    cut = explainer._cut()
    pixels = explainer._loaded.preprocess(np.stack(images).astype(np.float32))
    features = tf.function(lambda x: tf.nest.flatten(cut.features(x)))(pixels)
    return maps, [f.numpy() for f in features], explainer.predict(images)


def _same(spec, layer, images, methods, **made):
    """The maps, feature pass and probabilities of TensorFlow alone and of OpenVINO's feature pass, in fp32."""
    explainers = [Explainer(spec, layer=layer, precision="fp32", runtime=r, max_masks=8, **made)
                  for r in ("tensorflow", "openvino")]
    tensorflow, runtime = (_results(explainer, images, methods) for explainer in explainers)
    # OpenVINO did run (a pass that fell back to TensorFlow would make this comparison hollow)
    assert any(n.startswith("runtime openvino for the feature pass") for n in explainers[1].notes), explainers[1].notes
    for method, expected in tensorflow[0].items():
        got = runtime[0][method]
        if isinstance(expected, str):
            assert method == "cam" and got == expected
            continue
        assert np.array_equal(got.classes, expected.classes), method
        assert expected.maps.std() > 0, f"{method}: all-zero maps prove nothing"
        assert np.corrcoef(got.maps.ravel(), expected.maps.ravel())[0, 1] >= 0.9999, method
    for got, expected in zip(runtime[1], tensorflow[1], strict=True):  # A, and each skip crossing the cut
        assert got.shape == expected.shape and np.corrcoef(got.ravel(), expected.ravel())[0, 1] >= 0.9999
    for got, expected in zip(runtime[2], tensorflow[2]):
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-4)
    return runtime[1]


@pytest.mark.parametrize("name, constructor, layer, methods", BUILT_IN,
                         ids=[f"{n}-{layer or 'default'}" for n, _, layer, _ in BUILT_IN])
def test_openvino_gives_tensorflows_maps(name, constructor, layer, methods, keras, tmp_path_factory):
    weights = _weights(keras, constructor, tmp_path_factory)
    features = _same(name, layer, _images(2, 224), methods, weights=weights)
    assert len(features) == (2 if layer else 1)  # inside a block, the skip crosses the cut


def test_a_nested_backbone_and_a_skip_across_the_cut_give_tensorflows_maps(nested_model_file, skip_model):
    _same(str(nested_model_file), "conv5_block3_out", _images(2, 224), SOME)
    assert len(_same(skip_model, "b", _images(3, 48), CLASS_ACTIVATION)) == 2


# --- which runtime runs, and what the user is told --------------------------------------------------------------------

SQUASH = '''
import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tests")
class Squash(keras.layers.Layer):
    """x / (1 + |x|), computed by numpy: a layer no converter can see into."""

    def call(self, x):
        y = tf.numpy_function(lambda v: (v / (1 + np.abs(v))).astype(np.float32), [x], tf.float32)
        y.set_shape(x.shape)
        return y
'''


def _users_model(keras, tmp_path_factory, module: str, code: str, make) -> list[str]:
    """A user's model file that loads only with its code: `code`, written as MODULE.py and imported, hands its layer
    class to `make`, which builds the model; the command line's arguments for it."""
    folder = tmp_path_factory.mktemp(module)
    source = folder / f"{module}.py"
    source.write_text(code)
    sys.path.insert(0, str(folder))
    try:
        imported = importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))
    keras.utils.set_random_seed(2)
    path = folder / f"{module}.keras"
    make(imported).save(path)
    return ["--model", str(path), "--import", str(source)]


@pytest.fixture(scope="module")
def squash_model(keras, tmp_path_factory):
    """A user's model with a custom layer that runs numpy before its last convolution: no converter takes it."""

    def make(code):
        inputs = keras.Input((40, 40, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
        x = keras.layers.Conv2D(8, 3, name="last")(code.Squash()(x))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))

    return _users_model(keras, tmp_path_factory, "squash", SQUASH, make)


CHECKED = '''
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tests")
class Checked(keras.layers.Layer):
    """Passes its input on, once it has checked the pixels were scaled to [0, 1]."""

    def call(self, x):
        tf.debugging.assert_less_equal(tf.reduce_max(x), 1.0, message="pixels must be scaled to [0, 1]")
        return x
'''


@pytest.fixture(scope="module")
def checked_model(keras, tmp_path_factory):
    """A user's model that checks what it is given before its convolution: a check the converters would drop."""

    def make(code):
        inputs = keras.Input((40, 40, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu", name="last")(code.Checked()(inputs))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))

    return _users_model(keras, tmp_path_factory, "checked", CHECKED, make)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _rows(result):
    return [line.split("\t") for line in result.stdout.splitlines()]


def _same_rows(a, b):
    """The same predictions, their probabilities to the printed digits' last place (fp32 runtimes round apart)."""
    first, second = _rows(a), _rows(b)
    return len(first) == len(second) and all(
        x[:-1] == y[:-1] and abs(float(x[-1]) - float(y[-1])) <= 2e-6 for x, y in zip(first, second))


def test_auto_runs_the_feature_pass_on_openvino_converts_it_once_and_verbose_says_so(tiny_model, photo, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("EXPLAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offload, "_LOADED", {})  # as a new process: only the disk holds what was converted
    first = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "out", "-v")
    assert first.exit_code == 0, first.output
    assert re.search(r"note: tiny\.keras: runtime openvino for the feature pass up to conv3 \(converted in [0-9.]+ s; "
                     r"(fp32|bf16)\)", first.stderr), first.stderr
    assert len(list((tmp_path / "cache").iterdir())) == 1  # predictions run through the same cut: one conversion
    monkeypatch.setattr(offload, "_LOADED", {})
    again = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "again", "-v")
    assert "runtime openvino for the feature pass up to conv3 (from the cache;" in again.stderr
    assert _rows(again) == _rows(first) and len(list((tmp_path / "cache").iterdir())) == 1
    other = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "conv2", "--layer", "conv2", "-v")
    assert "runtime openvino for the feature pass up to conv2 (converted in" in other.stderr
    assert len(list((tmp_path / "cache").iterdir())) == 2  # keyed by the layer


def test_a_changed_model_file_is_converted_again(tiny_model, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAIN_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "model.keras"
    copy.write_bytes(tiny_model.read_bytes())
    assert "(converted in" in _run("predict", photo, "--model", copy, "-v").stderr
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))  # saved again: a new time
    assert "(converted in" in _run("predict", photo, "--model", copy, "-v").stderr
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_runtime_tensorflow_converts_nothing_and_gives_the_same_rows(tiny_model, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAIN_CACHE", str(tmp_path / "cache"))
    plain = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "a", "--runtime", "tensorflow", "-v")
    assert "note: tiny.keras: runtime tensorflow (--runtime tensorflow)" in plain.stderr
    assert not (tmp_path / "cache").exists()
    fast = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "b", "--precision", "fp32")
    slow = _run("gradcam", photo, "--model", tiny_model, "-o", tmp_path / "c", "--precision", "fp32",
                "--runtime", "tensorflow")
    assert _same_rows(fast, slow)
    a, b = (np.asarray(Image.open(next((tmp_path / d).glob("*.gradcam.*.jpg"))), np.float32) for d in "bc")
    assert np.abs(a - b).max() <= 2  # the same overlay, to JPEG's rounding


def test_a_runtime_not_installed_is_one_line_naming_its_extra_and_auto_goes_on(tiny_model, photo, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as where it is not installed: importing it fails
    asked = _run("predict", photo, "--model", tiny_model, "--runtime", "openvino")
    assert asked.exit_code == 1
    assert asked.stderr.splitlines() == ["error: --runtime openvino needs openvino: pip install 'explain-cli[openvino]'"]
    auto = _run("predict", photo, "--model", tiny_model, "-v")
    assert auto.exit_code == 0
    assert "runtime tensorflow (auto: OpenVINO is not installed; pip install 'explain-cli[openvino]'" in auto.stderr


def test_where_the_converter_cannot_follow_the_run_falls_back_and_says_why(squash_model, photo, tmp_path):
    auto = _run("gradcam", photo, *squash_model, "-o", tmp_path / "a", "-v", "--precision", "fp32")
    assert auto.exit_code == 0, auto.output
    assert ("note: squash.keras: runtime tensorflow for the feature pass up to last: OpenVINO could not take it (no "
            "conversion rule for its operations PyFunc)") in auto.stderr
    asked = _run("gradcam", photo, *squash_model, "-o", tmp_path / "b", "--runtime", "openvino", "--precision", "fp32")
    assert asked.exit_code == 0
    said = [line for line in asked.stderr.splitlines() if "warning" in line]
    assert said == ["warning: squash.keras: --runtime openvino: OpenVINO could not take the feature pass up to last "
                    "(no conversion rule for its operations PyFunc); it runs on TensorFlow"]
    plain = _run("gradcam", photo, *squash_model, "-o", tmp_path / "c", "--runtime", "tensorflow", "--precision",
                 "fp32")
    assert _same_rows(asked, plain) and _same_rows(auto, plain)
    measured = _run("evaluate", photo, *squash_model, "-o", tmp_path / "d", "--runtime", "openvino", "--steps", "4")
    assert measured.exit_code == 0, measured.output  # its maps, predictions and perturbed passes: tried once, said once
    assert len([line for line in measured.stderr.splitlines() if line.startswith("warning: ")]) == 1


def test_a_model_in_memory_stays_in_tensorflow_and_asking_otherwise_warns(keras, tiny_model):
    model = keras.saving.load_model(tiny_model)
    notes = []
    Explainer(model, on_note=lambda line, warning: notes.append((line, warning)))
    assert ("runtime tensorflow: auto: a model in memory keeps to TensorFlow, since its weights may change after its "
            "steps are made", False) in notes
    with pytest.warns(RuntimeWarning, match="--runtime openvino: a model in memory keeps to TensorFlow"):
        Explainer(model, runtime="openvino")


@pytest.mark.skipif(not offload.installed("onnxruntime") and not os.environ.get("CI"),
                    reason="the ONNX extra is not installed: pip install -e '.[test,onnx]'")
def test_onnx_runtime_gives_tensorflows_maps(skip_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # it converts: no fallback
        _same_runtime(skip_model, "b", "onnxruntime")


def _same_runtime(spec, layer, runtime):
    images = _images(3, 48)
    made = {r: Explainer(spec, layer=layer, precision="fp32", runtime=r) for r in ("tensorflow", runtime)}
    expected, got = (made[r].explain(images, top_k=2) for r in ("tensorflow", runtime))
    assert [e.class_index for e in got] == [e.class_index for e in expected]
    assert np.corrcoef(np.ravel([e.map for e in got]), np.ravel([e.map for e in expected]))[0, 1] >= 0.9999
    assert any(f"runtime {runtime} for the feature pass up to b" in note for note in made[runtime].notes)


# --- every command that runs the model: the same results on either runtime --------------------------------------------


def test_evaluate_measures_the_same_on_either_runtime(shapes_model):
    from tests.synthetic import make_scene

    images = [make_scene(np.random.default_rng(i)).image for i in range(4)]
    measured = [Explainer(shapes_model("none"), precision="fp32", runtime=r).evaluate(
        images, methods=("gradcam", "scorecam", "random"), steps=8) for r in ("tensorflow", "openvino")]
    for expected, got in zip(*(m.records for m in measured), strict=True):
        assert [got[k] for k in ("image", "method", "class_index")] == [expected[k] for k in ("image", "method", "class_index")]
        for metric in ("deletion_auc", "insertion_auc", "average_drop"):
            assert got[metric] == pytest.approx(expected[metric], abs=1e-4), metric


def test_detect_finds_and_explains_the_same_boxes_on_either_runtime(detector_model):
    from explain_cli import Detector
    from tests.synthetic_detector import make_scene

    images = [make_scene(np.random.default_rng(20 + i)).image for i in range(3)]
    made = {r: Detector(detector_model, precision="fp32", runtime=r) for r in ("tensorflow", "openvino")}
    expected, got = (made[r].explain(images) for r in ("tensorflow", "openvino"))
    assert any("runtime openvino for the feature pass" in note for note in made["openvino"].notes)  # once it ran
    assert [(e.source, e.class_index) for e in got] == [(e.source, e.class_index) for e in expected] and expected
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
        assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] >= 0.9999


def test_evaluate_on_a_detector_runs_where_runtime_says_and_verbose_says_so(detector_model, tmp_path):
    from tests.synthetic_detector import make_scene

    image = tmp_path / "scene.png"
    Image.fromarray(make_scene(np.random.default_rng(21)).image).save(image)
    for runtime, said in (("tensorflow", "runtime tensorflow (--runtime tensorflow)"),
                          ("openvino", "runtime openvino for the feature pass up to")):
        result = _run("evaluate", image, "--model", detector_model, "--methods", "gradcam,random", "--steps", "4",
                      "-o", tmp_path / runtime, "--runtime", runtime, "-v")
        assert result.exit_code == 0, result.output
        assert f"note: {detector_model.name}: {said}" in result.stderr


def test_segment_explains_the_same_regions_on_either_runtime(segmenter_model):
    from tests.synthetic import make_colour_blobs

    images = [make_colour_blobs(np.random.default_rng(30 + i)).image for i in range(3)]
    expected, got = (Explainer(segmenter_model, precision="fp32", runtime=r).explain(images, classes=[1, 2, 3])
                     for r in ("tensorflow", "openvino"))
    assert [(e.source, e.class_index) for e in got] == [(e.source, e.class_index) for e in expected]
    for a, b in zip(got, expected):
        assert a.share == pytest.approx(b.share, abs=1e-3)
        if b.map.std() > 0:
            assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] >= 0.9999


def test_the_cache_key_follows_the_code_a_model_imports_by_name_or_file(tmp_path, monkeypatch):
    from explain_cli.model import loading as models

    module = tmp_path / "my_layers.py"
    module.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name, by_file = (models.identity("resnet50", "imagenet", [i]) for i in ("my_layers", str(module)))
    assert str(module) in by_name and by_name == by_file
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 10**9))  # the code changed
    assert models.identity("resnet50", "imagenet", ["my_layers"]) != by_name


def test_activations_run_on_the_runtime_and_equal_tensorflows(tiny_model, photo, tmp_path, monkeypatch):
    """explain activations is a forward pass alone: its layers' outputs come from the runtime, as TensorFlow's."""
    from explain_cli.steps import activations as inside

    monkeypatch.setenv("EXPLAIN_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    layers = ("conv1", "conv2", "conv3")
    found = []
    for runtime in ("tensorflow", "openvino"):
        made = Explainer(tiny_model, precision="fp32", runtime=runtime)
        found.append(inside.compile_activations(made._model, made._graph, layers)(images))
    for name, expected, got in zip(layers, *found, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()), err_msg=name)
    result = _run("activations", photo, "--model", tiny_model, "--layer", "conv1", "--layer", "conv3", "-o",
                  tmp_path / "out", "-v", "--runtime", "openvino")
    assert result.exit_code == 0, result.output
    assert "runtime openvino for the activations of 2 layers, conv1 to conv3 (converted in" in result.stderr
    assert len(list((tmp_path / "out").glob("*.activations.*.png"))) == 2


def test_a_pass_is_converted_only_when_it_runs(keras, tmp_path, monkeypatch):
    """A detector whose box head also reads a skip from before the cut: its boxes' cut has a feature pass with that
    skip, its scores' own cut one without, which is never run (the scores' head alone is): one conversion, not two."""
    from explain_cli import Detector

    monkeypatch.setenv("EXPLAIN_CACHE", str(tmp_path / "cache"))
    keras.utils.set_random_seed(4)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    stem = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(
        layers.Rescaling(1 / 255)(inputs))
    features = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="features")(stem)
    skip = layers.MaxPooling2D(name="skip")(stem)
    boxes = layers.Conv2D(4, 1, name="box_conv")(layers.Concatenate()([features, skip])) * 10 + 16
    model = keras.Model(inputs, {"boxes": layers.Reshape((64, 4), name="boxes")(boxes), "scores": layers.Reshape(
        (64, 3), name="scores")(layers.Conv2D(3, 1, activation="sigmoid", name="classes")(features))})
    model.save(tmp_path / "skip.keras")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    made = Detector(tmp_path / "skip.keras", runtime="openvino", precision="fp32", min_score=0.0, max_boxes=2)
    cuts = made._steps.cuts
    assert made.layer == "features" and cuts[0].skips == 1 and cuts[1].skips == 0  # two feature passes differ
    explained = made.explain([image])
    assert len(explained) == 2 and any("runtime openvino for the feature pass up to features" in n for n in made.notes)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_model_that_checks_its_inputs_keeps_its_checks_on_tensorflow(checked_model, photo, tmp_path):
    """Unscaled pixels (0-255, with --preprocess none) fail the model's own check: on TensorFlow, as they would
    without explain, not waved through by a converter that drops assertions."""
    auto = _run("predict", photo, *checked_model, "-v")
    assert auto.exit_code == 1
    assert ("note: checked.keras: runtime tensorflow for the feature pass up to last: OpenVINO could not take it (it "
            "checks what it is given (Assert), which OpenVINO would skip)") in auto.stderr
    assert f"error: {photo}: the model failed as it ran: assertion failed: [pixels must be scaled to [0, 1]]" in \
        auto.stderr
    scaled = _run("predict", photo, *checked_model, "--preprocess", "tf")  # [-1, 1]: the check holds
    assert scaled.exit_code == 0 and len(_rows(scaled)) == 3, scaled.output


def test_openvino_is_imported_without_its_telemetry():
    """OpenVINO's converter sends usage events from forked copies of the whole process (8 for one conversion, each
    waiting on the network): explain converts without forking, and sends nothing."""
    body = """
import os, sys
from explain_cli.model.backend import load_tensorflow, openvino_quietly
tf, _ = load_tensorflow()
openvino = openvino_quietly()
forks = []
os.register_at_fork(after_in_parent=lambda: forks.append(1))
traced = tf.function(lambda x: tf.nn.relu(x) * 2.0).get_concrete_function(tf.TensorSpec([None, 4], tf.float32))
openvino.convert_model(traced)
print(len(forks), "openvino_telemetry" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "CI"})  # OpenVINO is silent in CI anyway
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
