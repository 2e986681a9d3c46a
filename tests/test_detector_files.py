"""Object detectors as model files: the tests' trained Keras detector, its outputs rearranged into each layout
exports give (YOLOv8, YOLOv5, DETR, separate boxes and scores), exported to ONNX and LiteRT, finds the Keras model's
boxes and explains them with its D-RISE maps; what cannot be read is one line naming the option to give."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, Detector, load
from explain_cli.cli.main import cli
from tests.synthetic_detector import make_scene

if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
    if os.environ.get("CI"):
        raise ImportError("CI installs the ONNX extra: its tests must run there")
    pytest.skip("the ONNX extra is not installed: pip install -e '.[test,onnx]'", allow_module_level=True)

LAYOUTS = ("yolov8", "yolov5", "detr", "detr-sigmoid", "boxes-scores")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rearranged(keras, detector_model, layout: str):
    """The trained detector with its outputs as `layout` gives them: boxes x0, y0, x1, y1 in pixels and sigmoid
    scores (b, 256, 3) made into a YOLO's one output, a DETR's normalised centres and logits, or left as they are."""
    from keras import ops

    base = keras.models.load_model(detector_model, compile=False)
    inputs = keras.Input((64, 64, 3))
    found = base(inputs)
    boxes, scores = found["boxes"], found["scores"]
    centres = ops.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], axis=-1)
    logits = ops.log(scores) - ops.log(1.0 - scores)
    outputs = {
        "yolov8": lambda: ops.transpose(ops.concatenate([centres, scores], axis=-1), (0, 2, 1)),  # (b, 7, 256)
        "yolov5": lambda: ops.concatenate([centres, ops.ones_like(scores[..., :1]), scores], axis=-1),  # (b, 256, 8)
        "detr": lambda: [centres / 64.0, ops.concatenate([logits, ops.zeros_like(logits[..., :1])], axis=-1)],
        "detr-sigmoid": lambda: [centres / 64.0, logits],
        "boxes-scores": lambda: [boxes, scores],
    }[layout]()
    model = keras.Model(inputs, outputs, name=layout.replace("-", "_"))
    model(np.zeros((1, 64, 64, 3), np.float32))  # Keras exports only a model that has been called
    return model


@pytest.fixture(scope="module")
def files(keras, detector_model, tmp_path_factory):
    """Each layout exported to ONNX, and YOLOv8's to LiteRT too: {(layout, format): path}."""
    folder = tmp_path_factory.mktemp("detector-files")
    made = {}
    for layout in LAYOUTS:
        path = folder / f"{layout}.onnx"
        rearranged(keras, detector_model, layout).export(str(path), format="onnx", verbose=False)
        made[layout, "onnx"] = path
    path = folder / "yolov8.tflite"
    rearranged(keras, detector_model, "yolov8").export(str(path), format="litert", verbose=False)
    made["yolov8", "litert"] = path
    path = folder / "yolov5_savedmodel"
    rearranged(keras, detector_model, "yolov5").export(str(path), format="tf_saved_model", verbose=False)
    made["yolov5", "savedmodel"] = path
    return made


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(31)
    return np.stack([make_scene(rng).image for _ in range(3)])


@pytest.mark.parametrize("layout, fmt", [(layout, "onnx") for layout in LAYOUTS if layout != "detr"] +
                         [("yolov8", "litert"), ("yolov5", "savedmodel")])
def test_a_detector_file_finds_and_explains_the_keras_models_boxes(detector_model, files, scenes, layout, fmt):
    options = dict(method="drise", masks=120, cells=8, seed=3)
    labels = ("red", "green", "blue")
    keras_made = Detector(detector_model, precision="fp32", labels=labels, **options)
    named = {"output_layout": "detr"} if layout.startswith("detr") else {}  # its boxes exceed the image: not DETR's own
    file_made = Detector(files[layout, fmt], labels=labels, iou=0.5, **named, **options)  # a DETR's: no suppression
    assert file_made.input_size == keras_made.input_size and file_made.labels == keras_made.labels
    assert any(note.startswith(f"outputs read as {layout.split('-')[0]}") for note in file_made.notes), file_made.notes
    expected, got = keras_made.predict(scenes), file_made.predict(scenes)
    for theirs, ours in zip(expected, got):
        assert [d.class_index for d in ours.predictions] == [d.class_index for d in theirs.predictions]
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1.0)  # to a pixel
        np.testing.assert_allclose([d.score for d in ours.predictions], [d.score for d in theirs.predictions],
                                   atol=1e-3)
    assert sum(len(p.predictions) for p in expected) >= 5
    for ours, theirs in zip(file_made.explain(scenes), keras_made.explain(scenes)):  # the same seed, the same masks
        assert ours.target.kind == "box" and ours.layer is None and ours.box == pytest.approx(theirs.box, abs=1.0)
        assert np.corrcoef(ours.map.ravel(), theirs.map.ravel())[0, 1] >= 0.999


def test_a_detr_file_with_a_no_object_class_is_read_as_a_softmax_without_suppression(files, scenes, keras,
                                                                                   detector_model):
    made = Detector(files["detr", "onnx"], min_score=0.3, max_boxes=10, output_layout="detr")
    assert made.format.classes == 3 and made.format.iou == 1.0
    # the same, in numpy: the export's logits through a softmax, "no object" dropped, every query its own detection
    model = rearranged(keras, detector_model, "detr")
    centres, logits = (np.asarray(t) for t in model(scenes.astype("float32")))
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities = (shifted / shifted.sum(-1, keepdims=True))[..., :3]
    for found, c, p in zip(made.predict(scenes), centres, probabilities):
        score, cls = p.max(-1), p.argmax(-1)
        order = [i for i in np.argsort(-score, kind="stable") if score[i] >= 0.3][:10]
        boxes = np.concatenate([c[order, :2] - c[order, 2:] / 2, c[order, :2] + c[order, 2:] / 2], -1) * 64
        assert [d.class_index for d in found.predictions] == [int(cls[i]) for i in order]
        np.testing.assert_allclose(found.boxes, np.clip(boxes, 0, 64), atol=1e-3)


def test_explain_detect_on_a_yolo_export_from_the_command_line(detector_model, files, scenes, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(scenes):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "out"
    result = run("detect", folder, "--model", files["yolov8", "onnx"], "--masks", 60, "-o", out)
    assert result.exit_code == 0, result.output
    assert "drise" in result.stderr  # a file has no layers: D-RISE, without being asked
    keras_rows = run("detect", folder, "--model", detector_model, "--method", "drise", "--masks", 60, "--precision",
                     "fp32", "-o", tmp_path / "keras").stdout.splitlines()
    rows = result.stdout.splitlines()
    assert len(rows) == len(keras_rows) >= 5
    for ours, theirs in zip(rows, keras_rows):  # image, k, class, label, score, x0, y0, x1, y1
        ours_cells, theirs_cells = ours.split("\t"), theirs.split("\t")
        assert ours_cells[:4] == theirs_cells[:4]
        np.testing.assert_allclose([float(v) for v in ours_cells[4:]], [float(v) for v in theirs_cells[4:]],
                                   atol=1.0)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == len(rows) and all((out / r["overlay"]).is_file() for r in records)
    evaluated = run("evaluate", folder, "--model", files["yolov8", "onnx"], "--methods", "drise,random", "--masks", 40,
                    "--steps", 4, "-o", tmp_path / "evaluated")
    assert evaluated.exit_code == 0, evaluated.output
    assert {json.loads(line)["method"] for line in (tmp_path / "evaluated" / "evaluation.jsonl").read_text()
            .splitlines()} == {"drise", "random"}


def test_what_a_detector_file_cannot_do_is_one_line(files, tiny_model, tmp_path):
    with pytest.raises(BadArgument, match=r"^yolov8.onnx: gradcam needs the model's layers; a model file has none, "
                                          r"so only drise explains its boxes") as refused:
        Detector(files["yolov8", "onnx"], method="gradcam")
    assert refused.value.option == "--method"
    assert isinstance(load(files["yolov8", "onnx"]), Detector)  # its output of three axes says it is a detector
    with pytest.raises(BadArgument, match=r"boxes-scores.onnx: its outputs are Identity:0 \(\?, 256, 4\), Identity_1:0 "
                                          r"\(\?, 256, 3\); a YOLO's is one \(B, 4 \+ C, A\) or \(B, A, 5 \+ C\)$"):
        Detector(files["boxes-scores", "onnx"], output_layout="yolov8")
    import keras

    classifier = tmp_path / "tiny.onnx"
    model = keras.models.load_model(tiny_model)
    model(np.zeros((1, 64, 64, 3), np.float32))
    model.export(str(classifier), format="onnx", verbose=False)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    result = run("detect", tmp_path / "a.png", "--model", classifier, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "tiny.onnx: its outputs are" in result.stderr and "--output-layout" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3


def test_an_ultralytics_export_names_its_classes_and_scales_its_pixels(files, scenes, tmp_path):
    import onnx

    model = onnx.load(str(files["yolov8", "onnx"]))
    for key, value in {"author": "Ultralytics", "task": "detect", "stride": "4", "imgsz": "[64, 64]",
                       "names": "{0: 'red', 1: 'green', 2: 'blue'}"}.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "yolo-export.onnx"
    onnx.save(model, str(path))
    made = Detector(path)
    assert made.labels == ("red", "green", "blue") and made.method == "drise"
    assert "preprocess unit (an Ultralytics export: pixels / 255)" in made.notes
    assert made.resize == "letterbox"  # as Ultralytics trains: a photo scaled whole, padded grey
    as_given = Detector(path, preprocess="none", labels=("a", "b", "c"))  # what is named wins
    assert as_given.labels == ("a", "b", "c") and not any("preprocess unit" in n for n in as_given.notes)
    expected = Detector(files["yolov8", "onnx"]).predict(scenes)
    assert [p.boxes.tolist() for p in as_given.predict(scenes)] == [p.boxes.tolist() for p in expected]


def test_a_yolo_graph_no_keras_code_made_is_read_as_numpy_decodes_it(tmp_path):
    """An NCHW ONNX graph built node by node (a 1 × 1 convolution to 4 + 2 channels, the boxes' sizes through a
    softplus, the scores through a sigmoid, flattened to (N, 6, A)): its boxes are what numpy makes of its output."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    weights = rng.normal(0, 0.05, (6, 3, 1, 1)).astype(np.float32)
    bias = np.array([16, 16, 2, 2, -1, -1], np.float32)
    grid = (np.arange(16, dtype=np.float32) + 0.5) * 2  # each cell's centre, in input pixels
    offsets = np.zeros((1, 6, 16, 16), np.float32)
    offsets[0, 0], offsets[0, 1] = grid[None, :] - 16, grid[:, None] - 16
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], strides=[2, 2]),
             helper.make_node("Add", ["conv", "offsets"], ["placed"]),
             helper.make_node("Split", ["placed", "parts"], ["centres", "sizes", "scores"], axis=1),
             helper.make_node("Softplus", ["sizes"], ["sized"]),
             helper.make_node("Sigmoid", ["scores"], ["scored"]),
             helper.make_node("Concat", ["centres", "sized", "scored"], ["joined"], axis=1),
             helper.make_node("Reshape", ["joined", "shape"], ["y"])]
    initial = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b"),
               numpy_helper.from_array(offsets, "offsets"), numpy_helper.from_array(np.array([2, 2, 2]), "parts"),
               numpy_helper.from_array(np.array([0, 6, 256]), "shape")]
    graph = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6, 256])], initial)
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    made = Detector(path, min_score=0.3, max_boxes=5, preprocess="unit")
    assert made.format.classes == 2 and any("layout NCHW" in note for note in made.notes)
    raw = onnxruntime.InferenceSession(str(path)).run(None, {"x": (images / 255.0).astype(np.float32)
                                                               .transpose(0, 3, 1, 2)})[0]
    for found, out in zip(made.predict(images), raw):
        cx, cy, w, h, scores = out[0], out[1], out[2], out[3], out[4:].T  # (A,), ..., (A, 2)
        best, cls = scores.max(-1), scores.argmax(-1)
        corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        kept = []
        for i in np.argsort(-best, kind="stable"):  # greedy suppression per class at IoU 0.5, in numpy
            if best[i] < 0.3 or len(kept) == 5:
                continue
            clash = False
            for j in kept:
                if cls[j] != cls[i]:
                    continue
                inner = np.prod(np.maximum(np.minimum(corners[i, 2:], corners[j, 2:]) -
                                           np.maximum(corners[i, :2], corners[j, :2]), 0))
                union = np.prod(corners[i, 2:] - corners[i, :2]) + np.prod(corners[j, 2:] - corners[j, :2]) - inner
                clash |= inner / union > 0.5
            if not clash:
                kept.append(i)
        assert [d.class_index for d in found.predictions] == [int(cls[i]) for i in kept]
        np.testing.assert_allclose(found.boxes, np.clip(corners[kept], 0, 32), atol=1e-4)


@pytest.mark.parametrize("fmt", ["savedmodel", "litert"])
def test_load_opens_a_model_file_once(files, monkeypatch, fmt):
    """What task a file is for is read from its outputs, and the runner that read them is the one the Detector runs:
    a SavedModel takes seconds to load."""
    from explain_cli.model import files as model_files

    opened = []
    real = model_files.open_runner
    monkeypatch.setattr(model_files, "open_runner", lambda kind, path, input_name=None: opened.append(path) or real(
        kind, path, input_name))
    layout = "yolov5" if fmt == "savedmodel" else "yolov8"
    made = load(files[layout, fmt])
    assert isinstance(made, Detector) and made.predict([np.zeros((64, 64, 3), np.uint8)]) is not None
    assert opened == [files[layout, fmt]]
