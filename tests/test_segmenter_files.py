"""Segmenters as model files, and RISE and occlusion on segmentations: the tests' trained segmenter made into a one
sigmoid channel (foreground: any colour), exported to ONNX in NHWC and NCHW, to LiteRT and to a SavedModel, gives the Keras model's class map and its
RISE maps; a class's RISE map on a Keras segmenter equals the formula in numpy over its region."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadArgument, Explainer
from explain_cli.cli.main import cli
from explain_cli.methods.perturbation import rise_masks
from tests.synthetic import make_colour_blobs, one_channel

if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
    if os.environ.get("CI"):
        raise ImportError("CI installs the ONNX extra: its tests must run there")
    pytest.skip("the ONNX extra is not installed: pip install -e '.[test,onnx]'", allow_module_level=True)

LABELS = ("background", "blob")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(keras, segmenter_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmenter-files")
    made = {"keras": folder / "blobs.keras"}
    one_channel(keras, segmenter_model).save(made["keras"])
    for layout, channels_first in (("nhwc", False), ("nchw", True)):
        made[layout] = folder / f"blobs-{layout}.onnx"
        one_channel(keras, segmenter_model, channels_first).export(str(made[layout]), format="onnx", verbose=False)
    made["litert"] = folder / "blobs.tflite"
    one_channel(keras, segmenter_model).export(str(made["litert"]), format="litert", verbose=False)
    made["savedmodel"] = folder / "blobs_savedmodel"
    one_channel(keras, segmenter_model).export(str(made["savedmodel"]), format="tf_saved_model", verbose=False)
    return made


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(12)
    return [make_colour_blobs(rng) for _ in range(3)]


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "litert", "savedmodel"])
def test_a_one_channel_segmenter_file_is_the_keras_models_class_map_and_rise_maps(files, scenes, layout):
    images = np.stack([s.image for s in scenes])
    options = dict(method="rise", masks=150, cells=6, seed=2, labels=LABELS)
    keras_made = Explainer(files["keras"], precision="fp32", **options)
    file_made = Explainer(files[layout], **options)
    assert keras_made.head.kind == file_made.head.kind == "pixels" and file_made.head.classes == 2
    laid_out = layout.upper() if layout in ("nhwc", "nchw") else "NHWC"
    assert any(f"laid out {laid_out}" in note for note in file_made.notes), file_made.notes
    theirs, ours = keras_made.predict(images), file_made.predict(images)
    for a, b in zip(ours, theirs):
        assert np.mean(a.class_map == b.class_map) >= 0.999  # a pixel on the threshold may round either way
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=2e-3)
    assert all(p.predictions[0].label in LABELS for p in ours)
    mine, keras_maps = file_made.explain(images), keras_made.explain(images)
    assert [(e.source, e.class_index) for e in mine] == [(e.source, e.class_index) for e in keras_maps]
    assert {e.target.kind for e in mine} == {"region"} and all(e.layer is None for e in mine)
    for a, b in zip(mine, keras_maps):
        assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] >= 0.999


def test_the_threshold_says_where_the_foreground_is(files, scenes, keras):
    images = np.stack([s.image for s in scenes])
    model = keras.models.load_model(files["keras"], compile=False)
    probability = np.asarray(model.predict(images.astype("float32"), verbose=0))[..., 0]
    for threshold in (0.5, 0.9):
        found = Explainer(files["nhwc"], threshold=threshold, labels=LABELS).predict(images)
        for p, expected in zip(found, probability):
            assert np.mean(p.class_map == (expected >= threshold)) >= 0.999
            assert p.probabilities[1] == pytest.approx(np.mean(expected >= threshold), abs=2e-3)


def test_a_letterboxed_segmenter_file_reads_the_picture_as_its_keras_original_does(files, scenes):
    """Shares and mean probabilities count the picture's part of the input alone, on a file (numpy over its outputs)
    as on Keras (tests/test_letterboxed_segments.py holds that one to numpy)."""
    wide = np.concatenate([scenes[0].image, scenes[1].image], axis=1)
    options = dict(resize="letterbox", labels=LABELS, method="rise", masks=30, cells=4, seed=2)
    keras_made, file_made = Explainer(files["keras"], precision="fp32", **options), Explainer(files["nhwc"], **options)
    (theirs,), (ours,) = keras_made.predict([wide]), file_made.predict([wide])
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=2e-3)
    assert [r.mean_probability for r in ours.predictions] == pytest.approx(
        [r.mean_probability for r in theirs.predictions], abs=2e-3)
    for mine, keras_map in zip(file_made.explain([wide], top_k=2), keras_made.explain([wide], top_k=2)):
        assert mine.class_index == keras_map.class_index
        assert mine.share == pytest.approx(keras_map.share, abs=2e-3) and mine.share == pytest.approx(
            ours.probabilities[mine.class_index], abs=2e-3)


def test_rise_on_a_segmentation_equals_the_formula_in_numpy(segmenter_model, keras, scenes):
    """S_c = Σ_i s_c(I ⊙ M_i) M_i / (N · keep), less its minimum, s_c the class's mean probability over where the
    unperturbed image predicts it, I ⊙ M = 128 + (I − 128) · M."""
    image = scenes[0].image
    made = Explainer(segmenter_model, method="rise", masks=40, cells=4, keep=0.5, seed=5, precision="fp32")
    explained = made.explain([image], classes=[1, 2, 3])
    model = keras.models.load_model(segmenter_model, compile=False)
    p = np.asarray(model.predict(image[None].astype("float32"), verbose=0))[0]
    masks = rise_masks(40, 4, 0.5, 5, 64, 64).chunk(0, 40)
    masked = 128.0 + (image[None].astype(np.float32) - 128.0) * masks[..., None]
    perturbed = np.asarray(model.predict(masked, verbose=0))
    assert explained
    for e in explained:
        region = np.argmax(p, -1) == e.class_index
        if not region.any():
            continue
        score = perturbed[..., e.class_index][:, region].mean(axis=1)
        expected = np.tensordot(score, masks, axes=1) / (40 * 0.5)
        expected -= expected.min()
        np.testing.assert_allclose(e.map, expected, rtol=1e-3, atol=1e-4 * expected.max())
        assert e.mean_probability == pytest.approx(p[..., e.class_index][region].mean(), abs=1e-4)


def test_explain_segment_on_an_onnx_file_from_the_command_line(files, scenes, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    result = run("segment", folder, "--model", files["nchw"], "--labels", labels, "--masks", 60, "-o",
                 tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "rise" in result.stderr  # a file has no layers: RISE, without being asked
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    found = Explainer(files["nchw"], labels=LABELS).predict(folder)
    assert sorted((r[0], int(r[1]), round(float(r[3]), 4)) for r in rows) == sorted(
        (p.source, c.class_index, round(c.probability, 4)) for p in found for c in p.predictions)
    assert Explainer(files["nchw"]).method == "rise"  # a file has no layers: RISE, without being asked
    with pytest.raises(BadArgument, match="gradcam needs the model's layers; it has no layers, so only rise and "
                                          "occlusion explain it"):
        Explainer(files["nchw"], method="gradcam").explain(folder)


def test_occlusion_and_evaluate_on_a_segmenter_file(files, scenes, tmp_path):
    """Occlusion explains a file's classes over their regions as on its Keras original; evaluate measures them
    (deletion and insertion of each class's mean probability over its region) from the command line."""
    images = np.stack([s.image for s in scenes])
    options = dict(method="occlusion", window=16, stride=8, labels=LABELS)
    for ours, theirs in zip(Explainer(files["nhwc"], **options).explain(images),
                            Explainer(files["keras"], precision="fp32", **options).explain(images)):
        assert ours.class_index == theirs.class_index and ours.map.shape == (64, 64)
        assert np.corrcoef(ours.map.ravel(), theirs.map.ravel())[0, 1] >= 0.999
    folder = tmp_path / "in"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
    result = run("evaluate", folder, "--model", files["nchw"], "--methods", "rise,random", "--masks", 40,
                 "--steps", 4, "-o", tmp_path / "evaluated")
    assert result.exit_code == 0, result.output
    import json

    records = [json.loads(line) for line in (tmp_path / "evaluated" / "evaluation.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"rise", "random"} and len(records) == 2 * len(scenes)
    assert all(0.0 <= r["deletion_auc"] <= 1.0 for r in records)
