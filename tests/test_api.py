"""The Python API: an Explainer made once, on a model in memory, a built-in name or a file, giving what the command
line gives, computed once per shape, streaming what it is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import explain_cli
from explain_cli import BadArgument, BadInput, ExplainError, Explainer, Explanation
from explain_cli.cli.main import cli
from tests.synthetic import SHAPE_CLASSES, make_scene
from tests.test_gradcam_correctness import _assert_close, _reference_maps


def small_model(keras, seed: int = 3):
    """A functional CNN built here, never saved: conv / ReLU / conv / ReLU / pooling / Dense logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((40, 48, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="first")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="second")(x)
    outputs = keras.layers.Dense(5, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="small")


def photos(n: int, rng_seed: int = 0, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    blocky = rng.integers(0, 256, (n, size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return blocky.repeat(8, axis=1).repeat(8, axis=2)


@pytest.fixture(scope="module")
def mobilenet_weights(keras, tmp_path_factory) -> Path:
    keras.utils.set_random_seed(21)
    path = tmp_path_factory.mktemp("mobilenet") / "mobilenet_v2.weights.h5"
    keras.applications.MobileNetV2(weights=None).save_weights(path)
    return path


def test_import_and_the_names_load_no_tensorflow():
    body = ("import sys, explain_cli\nfrom explain_cli import Explainer, Explanation, Evaluation, ExplainError\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy'\n"
            "assert set(explain_cli.__all__) <= set(dir(explain_cli))")
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["in memory", "file", "built-in name"])
def test_maps_equal_a_full_tape_for_a_model_in_memory_a_file_and_a_built_in_name(kind, keras, tmp_path,
                                                                                 mobilenet_weights):
    """Grad-CAM through the Explainer against the whole forward pass under one GradientTape, in numpy."""
    if kind == "built-in name":
        explainer = Explainer("mobilenet_v2", weights=str(mobilenet_weights), precision="fp32")
        reference = keras.applications.MobileNetV2(weights=None, classifier_activation=None)
        reference.load_weights(mobilenet_weights)
        images = photos(2, size=(224, 224))
    else:
        reference = small_model(keras)
        if kind == "file":
            reference.save(tmp_path / "small.keras")
        explainer = Explainer(tmp_path / "small.keras" if kind == "file" else reference, precision="fp32")
        images = photos(2)
    multi = keras.Model(reference.input, [reference.get_layer(explainer.layer.split("/")[-1]).output,
                                          reference.output])
    # A random MobileNetV2's logits are all about 1e-12, so its top classes are ties: name two instead.
    explained = explainer.explain(images, **({"classes": [773, 631]} if kind == "built-in name" else {"top_k": 2}))
    classes = np.array([[e.class_index for e in explained[i * 2:(i + 1) * 2]] for i in range(2)])
    x = explainer._model.preprocess(images.astype("float32"))
    expected, logits = _reference_maps(keras, multi, x, classes)
    if kind != "built-in name":
        np.testing.assert_array_equal(classes, np.argsort(-logits, axis=1, kind="stable")[:, :2])
    maps = np.stack([[e.map for e in explained[i * 2:(i + 1) * 2]] for i in range(2)])
    # BatchNorm folded (a file, a built-in): equal to float rounding; unfolded (in memory): exactly the model
    scale = np.abs(expected).max()
    np.testing.assert_allclose(maps, expected, atol=(1e-3 if kind == "built-in name" else 1e-4) * scale)
    assert [e.target_score for e in explained] == pytest.approx(np.take_along_axis(logits, classes, 1).ravel(),
                                                                rel=1e-3, abs=1e-3 * float(np.abs(logits).max()))


def test_maps_equal_the_command_lines_saved_heatmaps(tiny_model, tiny_labels, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(photo_tree), "--model", str(tiny_model), "--labels",
                                      str(tiny_labels), "--top-k", "2", "--save-heatmap", "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    explained = Explainer(tiny_model, labels=tiny_labels).explain(photo_tree, top_k=2)
    assert [(e.source, e.class_index, e.label, e.rank) for e in explained] == [
        (r["image"], r["class_index"], r["label"], r["rank"]) for r in records]
    for e, record in zip(explained, records):
        assert e.probability == pytest.approx(record["score"]) and e.target_score == pytest.approx(
            record["target_score"])
        np.testing.assert_allclose(e.heatmap(e.map.shape[::-1]), np.load(out / record["heatmap"]), atol=1e-6)


def test_every_kind_of_images_in_one_call_each_at_its_own_size(tiny_model, tmp_path):
    explainer = Explainer(tiny_model, arrays="pixels")  # float arrays are pictures too (test_given_arrays.py: inputs)
    rng = np.random.default_rng(7)
    scenes = [make_scene(rng, 64 + 10 * i, 80 - 6 * i).image for i in range(4)]
    Image.fromarray(scenes[2]).save(tmp_path / "a.png")
    (tmp_path / "folder").mkdir()
    Image.fromarray(scenes[3]).save(tmp_path / "folder" / "b.png")
    given = [scenes[0], Image.fromarray(scenes[1]), str(tmp_path / "a.png"), tmp_path / "folder",
             scenes[0].astype(np.float32)]  # floats in 0-255, as keras.utils.img_to_array gives
    explained = explainer.explain(given)
    assert scenes[0].flags.writeable  # the caller's array is left as it was
    assert [e.source for e in explained] == [0, 1, str(tmp_path / "a.png"), str(tmp_path / "folder" / "b.png"), 2]
    assert [e.image.shape for e in explained] == [s.shape for s in scenes] + [scenes[0].shape]
    assert [e.heatmap().shape for e in explained] == [s.shape[:2] for s in scenes] + [scenes[0].shape[:2]]
    np.testing.assert_allclose(explained[4].map, explained[0].map, rtol=1e-5)  # the same pixels, as floats
    batch = explainer.explain(np.stack([scenes[0], scenes[0]]))  # a numpy batch: one image a row
    assert [e.source for e in batch] == [0, 1]
    np.testing.assert_allclose(batch[1].map, explained[0].map, rtol=1e-5)


def test_a_generator_of_a_thousand_images_streams(tiny_model):
    """Never loaded whole: the first explanation comes out when at most three batches have been read (one
    rendering, one computing, one decoding), and memory stays flat while a thousand go through."""
    explainer = Explainer(tiny_model, batch_size=16)
    read = []

    def images():
        rng = np.random.default_rng(0)
        for i in range(1000):
            read.append(i)
            yield rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)

    stream = explainer.iter_explain(images())
    first = next(stream)
    assert first.source == 0 and len(read) <= 3 * 16
    sizes = []
    for count, explanation in enumerate(stream, start=2):
        if count in (300, 1000):
            sizes.append(_resident_mib())
    assert count == 1000 and explanation.source == 999
    assert sizes[1] - sizes[0] < 20, sizes  # 700 more images of 48 KiB each, held, would be 34 MiB more


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_ten_calls_on_batches_of_one_shape_trace_once(tiny_model):
    explainer = Explainer(tiny_model)
    batch = photos(4, size=(64, 64))
    for _ in range(10):
        explainer.explain(batch)
    (step,) = [s for key, s in explainer._steps.items() if key[0] == "gradcam"]
    assert step.traced.experimental_get_tracing_count() == 1


def test_the_explainer_follows_a_model_trained_further_without_retracing(keras):
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    scenes = [make_scene(rng) for _ in range(256)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([s.label for s in scenes])
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="logits")])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    explainer = Explainer(model, precision="fp32")
    before = np.stack([e.map for e in explainer.explain(x[:4].astype(np.uint8), classes=0)])
    weights = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    after = np.stack([e.map for e in explainer.explain(x[:4].astype(np.uint8), classes=0)])
    assert not np.allclose(before, after)
    assert not all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    (step,) = [s for key, s in explainer._steps.items() if key[0] == "gradcam"]
    assert step.traced.experimental_get_tracing_count() == 1
    fresh = Explainer(model, precision="fp32").explain(x[:4].astype(np.uint8), classes=0)
    np.testing.assert_allclose(after, np.stack([e.map for e in fresh]), rtol=1e-5, atol=1e-7)


def test_classes_by_number_label_list_and_per_image(tiny_model, tiny_labels):
    explainer = Explainer(tiny_model, labels=tiny_labels)
    rng = np.random.default_rng(3)
    images = [make_scene(rng).image for _ in range(3)]
    assert [e.class_index for e in explainer.explain(images, classes=2)] == [2, 2, 2]
    assert [e.label for e in explainer.explain(images, classes="green")] == ["green"] * 3
    assert [e.class_index for e in explainer.explain(images, classes=["blue", 0])] == [2, 0] * 3
    assert [e.class_index for e in explainer.explain(images, classes={0: 1, 1: "red", 2: 2})] == [1, 0, 2]
    top = explainer.explain(images, top_k=3)
    assert [e.rank for e in top] == [1, 2, 3] * 3
    assert [e.label for e in top] == [SHAPE_CLASSES[e.class_index] for e in top]
    with pytest.raises(BadArgument, match="unknown class 'purple'"):
        explainer.explain(images, classes="purple")
    with pytest.raises(BadArgument, match="exclusive"):
        explainer.explain(images, classes=1, top_k=2)
    with pytest.raises(BadArgument, match="no class was given for the image 2"):
        explainer.explain(images, classes={0: 1, 1: 1})


def test_predict_layers_and_what_it_is(tiny_model, tiny_labels):
    explainer = Explainer(tiny_model, labels=tiny_labels)
    scene = make_scene(np.random.default_rng(1))
    (predicted,) = explainer.predict(scene.image, top=2)
    assert predicted.source == 0 and [p.rank for p in predicted.predictions] == [1, 2]
    assert predicted.top.label == SHAPE_CLASSES[scene.label] and predicted.probabilities.sum() == pytest.approx(1)
    assert [(layer.name, layer.default) for layer in explainer.layers()] == [
        ("rescale", False), ("conv1", False), ("pool1", False), ("conv2", False), ("pool2", False), ("conv3", True)]
    assert explainer.layers()[-1].shape == (16, 16, 32) and explainer.layers()[-1].kind == "Conv2D"
    assert explainer.labels == SHAPE_CLASSES and explainer.input_size == (64, 64, 3) and explainer.layer == "conv3"
    assert repr(explainer).startswith("Explainer('tiny.keras', method='gradcam', layer='conv3'")
    with pytest.raises(BadArgument, match="unknown layer 'conv9'"):
        Explainer(tiny_model, layer="conv9")
    with pytest.raises(BadArgument, match="unknown method 'nope'"):
        Explainer(tiny_model, method="nope")


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "scorecam", "vanilla", "guided-gradcam", "random"])
def test_every_kind_of_method(tiny_model, method):
    explained = Explainer(tiny_model, method=method, max_masks=8).explain(photos(2, size=(64, 64)))
    assert [e.method for e in explained] == [method] * 2 and all(np.isfinite(e.map).all() for e in explained)
    pixel = method in ("vanilla", "guided-gradcam", "random")
    assert explained[0].map.shape == ((64, 64) if pixel else (16, 16))


def test_an_explanation_is_a_frozen_value_that_draws_itself(tiny_model):
    (e,) = Explainer(tiny_model).explain(make_scene(np.random.default_rng(2), 70, 90).image)
    assert isinstance(e, Explanation) and e.map.dtype == np.float32
    with pytest.raises(AttributeError):
        e.label = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        e.map[0, 0] = 1.0  # read-only
    heat = e.heatmap()
    assert heat.shape == (70, 90) and 0 <= heat.min() and heat.max() <= 1.0
    assert e.heatmap(e.map.shape[::-1]).max() == 1.0  # at the layer's own resolution: map / max
    assert e.heatmap((45, 35)).shape == (35, 45)
    overlay = e.overlay(alpha=0.0)
    assert overlay.size == (90, 70) and np.array_equal(np.asarray(overlay), e.image)  # alpha 0: the image itself
    assert e.figure().mode == "RGB" and e._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_images_raise_or_are_skipped(tiny_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    explainer = Explainer(tiny_model)
    good = make_scene(np.random.default_rng(0)).image
    with pytest.raises(BadInput, match=f"{broken}: not an image"):
        explainer.explain([good, str(broken)])
    # in-memory images are numbered among themselves; a file is its path
    assert [e.source for e in explainer.explain([good, str(broken), good], errors="skip")] == [0, 1]
    with pytest.raises(BadInput, match=r"has 5 channels \(5 bands\); the model takes 3"):
        explainer.explain(np.zeros((8, 8, 5), np.uint8))  # five channels: a picture for a model of five
    with pytest.raises(BadInput, match=r"an image array is \(height, width"):
        explainer.explain([np.zeros((8,), np.uint8)])  # not a picture at all
    assert issubclass(BadInput, ExplainError) and explain_cli.__version__


def test_evaluate_gives_the_numbers_the_command_line_prints(tiny_model, tiny_labels, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["evaluate", str(photo_tree), "--model", str(tiny_model), "--labels",
                                      str(tiny_labels), "--steps", "4", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = {row["method"]: row for row in map(json.loads, result.stdout.splitlines())}
    evaluation = Explainer(tiny_model, labels=tiny_labels).evaluate(photo_tree, steps=4)
    assert [s.method for s in evaluation.summaries] == list(printed)
    for summary in evaluation.summaries:
        for column, value in summary.means.items():
            expected = printed[summary.method][column]
            assert (value is None and expected is None) or value == pytest.approx(expected["mean"], abs=1e-6)
    written = [json.loads(line) for line in (out / "evaluation.jsonl").read_text().splitlines()]
    assert len(evaluation.records) == len(written) == 6
    assert [r["deletion_auc"] for r in evaluation.records] == pytest.approx([r["deletion_auc"] for r in written])


def test_evaluate_with_boxes_by_key_and_sanity(tiny_model, tiny_labels):
    rng = np.random.default_rng(9)
    scenes = [make_scene(rng) for _ in range(3)]
    boxes = {i: [(s.box[1], s.box[0], s.box[3], s.box[2])] for i, s in enumerate(scenes)}
    evaluation = Explainer(tiny_model, labels=tiny_labels).evaluate([s.image for s in scenes], steps=2, boxes=boxes,
                                                                   sanity=True, sanity_stages=2)
    assert evaluation.summary("gradcam").means["pointing_game"] == 1.0  # the trained model looks at the square
    assert {r["stage"] for r in evaluation.sanity} == {1, 2} and len(evaluation.sanity) == 3 * 2 * 2


def test_keras_and_tensorflow_settings_are_as_they_were(tiny_model):
    body = f"""
import json, logging, os
import keras, tensorflow as tf, absl.logging
def state():
    return dict(backend=keras.config.backend(), floatx=keras.config.floatx(), epsilon=keras.config.epsilon(),
                image_data_format=keras.config.image_data_format(), policy=keras.config.dtype_policy().name,
                interactive=keras.config.is_interactive_logging_enabled(), tf_logger=tf.get_logger().level,
                absl=absl.logging.get_verbosity(), env={{k: os.environ.get(k) for k in ("KERAS_BACKEND",
                "TF_CPP_MIN_LOG_LEVEL")}}, threads=(tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads()), jit=tf.config.optimizer.get_jit(),
                eager=tf.config.functions_run_eagerly(), custom=sorted(keras.saving.get_custom_objects()))
before = state()
import numpy as np
from explain_cli import Explainer
explainer = Explainer({str(tiny_model)!r}, precision="bf16" if {_bf16_runs()} else "fp32")
explainer.explain(np.zeros((2, 64, 64, 3), np.uint8), top_k=2)
explainer.evaluate(np.zeros((1, 64, 64, 3), np.uint8), steps=2)
assert state() == before, (before, state())
"""
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")})
    assert done.returncode == 0, done.stderr[-3000:]


def _bf16_runs() -> bool:
    from explain_cli.model import precision

    return precision.bf16_support() != "unavailable"


def test_a_keras_on_another_backend_is_one_line(tiny_model):
    """A Keras already imported on JAX, as explain sees it: JAX is not installed here (nor PyTorch, nor the SciPy that
    Keras' numpy backend needs), so this Keras says it runs jax, which is all explain reads of it."""
    body = f"""
import keras
keras.config.backend = lambda: "jax"
from explain_cli import Explainer, ExplainError
try:
    Explainer({str(tiny_model)!r})
except ExplainError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ("explain needs Keras' TensorFlow backend, and this Keras runs jax: set "
                           "KERAS_BACKEND=tensorflow before Keras is first imported\n")
