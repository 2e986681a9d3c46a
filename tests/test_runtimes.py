"""Models explain can only run: a SavedModel folder, a LiteRT file and an ONNX file exported by Keras itself predict
and explain (RISE, occlusion) as the Keras model does; an ONNX model no Keras code made (NCHW, a softmax) is read from
its own graph; what a file cannot give is one line."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, ExplainError, Explainer
from explain_cli.cli.main import cli

if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
    if os.environ.get("CI"):
        raise ImportError("CI installs the ONNX extra: its tests must run there")
    pytest.skip("the ONNX extra is not installed: pip install -e '.[test,onnx]'", allow_module_level=True)

FORMATS = {"savedmodel": ("tf_saved_model", "tiny_savedmodel"), "litert": ("litert", "tiny.tflite"),
           "onnx": ("onnx", "tiny.onnx")}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny trained model, exported by Keras to each format: {format: path}."""
    import keras

    folder = tmp_path_factory.mktemp("exported")
    model = keras.models.load_model(tiny_model)
    paths = {}
    for name, (fmt, file) in FORMATS.items():
        model.export(str(folder / file), format=fmt, verbose=False)
        paths[name] = folder / file
    return paths


@pytest.fixture(scope="module")
def scenes(tiny_model):
    """A few images at the model's size: coloured squares on grey, as the tiny model was trained on."""
    rng = np.random.default_rng(7)
    images = rng.integers(90, 140, (4, 64, 64, 3)).astype(np.uint8)
    for image, colour in zip(images, [(230, 40, 40), (40, 200, 60), (50, 60, 230), (220, 220, 40)]):
        top, left = rng.integers(4, 36, 2)
        image[top:top + 24, left:left + 24] = colour
    return images


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_keras_model_exported_by_keras_predicts_and_explains_as_itself(tiny_model, exported, scenes, fmt):
    keras_made = Explainer(tiny_model, method="rise", masks=300, precision="fp32")
    assert keras_made.input_size[:2] == scenes.shape[1:3]
    file_made = Explainer(exported[fmt], method="rise", masks=300)
    assert file_made.input_size == keras_made.input_size and file_made.labels == keras_made.labels
    assert any("layout NHWC (from the file" in note for note in file_made.notes)
    expected = np.stack([p.probabilities for p in keras_made.predict(scenes)])
    got = np.stack([p.probabilities for p in file_made.predict(scenes)])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    for ours, theirs in zip(file_made.explain(scenes), keras_made.explain(scenes)):  # the same seed, the same masks
        assert ours.class_index == theirs.class_index and ours.layer is None
        assert np.corrcoef(ours.map.ravel(), theirs.map.ravel())[0, 1] >= 0.999


def test_a_fully_quantised_litert_model_takes_and_gives_uint8(tiny_model, scenes, tmp_path):
    """Quantised to 8 bits, input and output: pixels go in through its scale and zero point, and its softmax is found
    behind the final quantisation, so its outputs are read as probabilities (to the 8 bits' rounding)."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(tiny_model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in scenes)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    (tmp_path / "q.tflite").write_bytes(converter.convert())
    explainer = Explainer(tmp_path / "q.tflite", method="occlusion")
    assert "outputs read as probabilities (the graph ends in a softmax)" in explainer.notes
    got = np.stack([p.probabilities for p in explainer.predict(scenes)])
    np.testing.assert_allclose(got, model.predict(scenes.astype(np.float32), verbose=0), atol=0.03)


def nchw_softmax_model(path, weights: np.ndarray, batch: int | str = "batch") -> None:
    """An ONNX model built with onnx's helpers: (N, 3, H, W) floats in [0, 1] -> mean per channel -> MatMul -> Softmax;
    `batch`: a fixed batch size, as PyTorch exports by default, or a free one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Div", ["image", "scale"], ["unit"]),
        helper.make_node("ReduceMean", ["unit", "axes"], ["means"], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 24, 20])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, weights.shape[1]])],
        initializer=[numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
                     numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
                     numpy_helper.from_array(weights.astype(np.float32), "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("batch", ["batch", 1, 5])
def test_an_onnx_model_no_keras_code_made_is_read_from_its_graph_and_explained(tmp_path, batch):
    weights = np.array([[8.0, -4.0, -4.0], [-4.0, 8.0, -4.0], [-4.0, -4.0, 8.0]])  # red, green, blue
    nchw_softmax_model(tmp_path / "colours.onnx", weights, batch)
    explainer = Explainer(tmp_path / "colours.onnx", method="occlusion", window=4, stride=4, labels=["r", "g", "b"])
    assert explainer.input_size == (24, 20, 3)
    assert f"layout NCHW (from the file: input ({'?' if batch == 'batch' else batch}, 3, 24, 20))" in explainer.notes
    assert "outputs read as probabilities (the graph ends in a softmax)" in explainer.notes
    image = np.full((24, 20, 3), 30, np.uint8)
    image[4:12, 8:16] = (40, 40, 250)  # a blue square
    (p,) = explainer.predict(image)
    logits = (image.astype(np.float64) / 255).mean(axis=(0, 1)) @ weights
    np.testing.assert_allclose(p.probabilities, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    (e,) = explainer.explain(image)
    assert e.label == "b" and e.layer is None
    inside = e.map[4:12, 8:16].mean()
    assert inside > 0 and inside > 3 * np.abs(e.map[16:, :]).mean()  # greying the blue square costs "blue" most


def test_the_command_line_runs_them_and_says_how_it_read_them(exported, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(image)
    result = run("cam", image, "--model", exported["onnx"], "--method", "occlusion", "-o", tmp_path / "out", "-v")
    assert result.exit_code == 0, result.output
    assert "note: tiny.onnx: an ONNX model, run by ONNX Runtime" in result.stderr
    assert "tiny.onnx: occlusion a 9-pixel grey window every 4 pixels" in result.stderr
    assert len(list((tmp_path / "out").glob("a.occlusion.*.jpg"))) == 1
    predicted = run("predict", image, "--model", exported["litert"])
    assert predicted.exit_code == 0 and predicted.stdout.count("\t") == 3 * 4  # its three classes, a line each
    evaluated = run("evaluate", image, "--model", exported["savedmodel"], "--methods", "occlusion,random", "--steps",
                    4, "-o", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert [line.split("\t")[0] for line in evaluated.stdout.splitlines()] in (["occlusion", "random"],
                                                                                ["random", "occlusion"])


def test_what_such_a_model_cannot_do_is_one_line(exported, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(image)
    for args, message in [
        (["gradcam", image, "--model", exported["onnx"]],
         "gradcam needs the model's layers; it has no layers, so only rise and occlusion explain it"),
        (["layers", "--model", exported["litert"]], "has no layers, so only rise and occlusion explain it"),
        (["cam", image, "--model", exported["onnx"], "--method", "rise", "--layout", "nchw"],
         "its input has 64 channels in NCHW; explain feeds 1 or 3"),
        (["cam", image, "--model", exported["onnx"], "--method", "rise", "--input-size", "32x32"],
         "takes 64×64 images, not 32×32"),
    ]:
        result = run(*args)
        assert result.exit_code != 0 and "Traceback" not in result.stderr
        assert sum(message in line for line in result.stderr.splitlines()) == 1, result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(ExplainError, match=r"broken.onnx: not an ONNX model it can read"):
        Explainer(broken, method="rise")
    with pytest.raises(BadArgument, match="--input-size HEIGHTxWIDTH"):
        free = tmp_path / "free.onnx"
        nchw_free(free)
        Explainer(free, method="rise")


def nchw_free(path) -> None:
    """An ONNX model whose input size is free: (N, 3, ?, ?)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["means"], keepdims=0)], "free",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["batch", 3])],
        initializer=[onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
