"""Volumes: a Conv3D classifier on (depth, height, width, channels). Maps at a 5-D layer equal a full tape's; the pixel
methods' equal the tape's input gradients; RISE and occlusion in 3-D equal numpy and a hand-worked case; NIfTI in,
NIfTI out on the same grid and affine; DICOM series and TIFF stacks read; a bad volume fails alone."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from explain_cli import Explainer
from explain_cli.cli.main import cli
from explain_cli.inputs.grids import resample
from explain_cli.methods.perturbation import bilinear, rise_masks

nibabel = pytest.importorskip("nibabel")
GRID = (6, 12, 10)  # the model's depth, height and width
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0, 5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])


def conv3d(keras, rescaled: bool = False):
    """A small Conv3D classifier on a volume of values (no Rescaling inside), ending in its own softmax layer."""
    keras.utils.set_random_seed(21)
    x = inputs = keras.Input((*GRID, 1))
    if rescaled:
        x = keras.layers.Rescaling(1 / 100.0)(x)
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Conv3D(6, 3, strides=(1, 2, 2), padding="same", activation="relu", name="features")(x)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling3D()(x))
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def volume(seed: int, sides=GRID) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=sides).astype(np.float32)


def tape(keras, model, x: np.ndarray, class_index: int):
    """(Grad-CAM at `features`, HiResCAM there, the input's gradient) of the logit, by one full tape."""
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer("features").output, model.get_layer("logits").output])
    given = tf.constant(x[None, ..., None])
    with tf.GradientTape(persistent=True) as t:
        t.watch(given)
        features, logits = probe(given)
        score = logits[0, class_index]
    g, a = t.gradient(score, features)[0].numpy(), features[0].numpy()
    return (np.maximum((a * g.mean(axis=(0, 1, 2))).sum(-1), 0), np.maximum((a * g).sum(-1), 0),
            t.gradient(score, given)[0, ..., 0].numpy())


def r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def saved(keras, tmp_path_factory):
    """The model as a user's file, and a NIfTI volume of another size with an anisotropic affine."""
    folder = tmp_path_factory.mktemp("volumes")
    conv3d(keras).save(folder / "c3d.keras")
    nibabel.save(nibabel.Nifti1Image(volume(3, (9, 20, 14)), AFFINE), folder / "scan.nii.gz")
    return folder


@pytest.mark.parametrize("rescaled", [False, True])
def test_gradcam_and_hirescam_of_a_volume_equal_a_full_tape(keras, rescaled):
    model = conv3d(keras, rescaled)
    x = volume(1)
    for method, which in (("gradcam", 0), ("hirescam", 1)):
        (e,) = Explainer(model, method=method, precision="fp32").explain(x)
        assert e.layer == "features" and e.map.shape == (6, 6, 5) and e.grid.kind == "volume"
        assert r(e.map, tape(keras, model, x, e.class_index)[which]) >= 0.999
        assert e.probability == pytest.approx(float(np.asarray(model(x[None, ..., None]))[0, e.class_index]), abs=1e-5)
        assert e.heatmap().shape == GRID and e.image.shape == (*GRID, 1)


def test_vanilla_gradients_of_a_volume_equal_the_tape(keras):
    model = conv3d(keras)
    x = volume(2)
    (e,) = Explainer(model, method="vanilla", precision="fp32").explain(x)
    assert r(e.map, np.abs(tape(keras, model, x, e.class_index)[2])) >= 0.999


def test_rise_in_three_dimensions_equals_numpy(keras):
    model = conv3d(keras)
    x = volume(4)
    (e,) = Explainer(model, method="rise", masks=24, cells=3, seed=7, precision="fp32").explain(x)
    masks = rise_masks(24, 3, 0.5, 7, *GRID[1:], depth=GRID[0]).chunk(0, 24)
    scores = np.asarray(model((x[None] * masks)[..., None]))[:, e.class_index]  # hidden voxels go to 0
    expected = np.tensordot(scores, masks, axes=1) / (24 * 0.5)
    assert np.allclose(e.map, expected - expected.min(), atol=1e-4)


def test_a_three_dimensional_rise_mask_is_the_separable_upsampling_of_its_grid():
    masks = rise_masks(3, 3, 0.5, 1, 7, 5, depth=4)
    lines = [bilinear(3, c * 4) for c in (2, 3, 2)]  # each side's cell, ceil(side / 3), times cells + 1
    for i in range(3):
        d, h, w = masks.shifts[i]
        expected = np.einsum("di,hj,wk,ijk->dhw", lines[0][d:d + 4], lines[1][h:h + 7], lines[2][w:w + 5],
                             masks.grids[i])
        assert np.allclose(masks.chunk(i, i + 1)[0], expected, atol=1e-6)


def test_occlusion_in_three_dimensions_by_hand(keras):
    model = conv3d(keras)
    x = volume(5)
    (e,) = Explainer(model, method="occlusion", window=6, stride=6, precision="fp32").explain(x)
    p = lambda v: float(np.asarray(model(v[None, ..., None]))[0, e.class_index])  # noqa: E731
    expected = np.zeros(GRID, np.float32)
    for depth in range(6):  # along the depth: a window of round(6 / 7) = 1 slice, every slice
        for top in (0, 6):
            for left in (0, 4):  # the last window touches the edge: 10 - 6
                hidden = x.copy()
                hidden[depth, top:top + 6, left:left + 6] = 0.0
                expected[depth, top:top + 6, left:left + 6] += p(x) - p(hidden)
    covered = np.ones(GRID)
    covered[:, :, 4:6] = 2  # the two windows across the width overlap there
    assert np.allclose(e.map, expected / covered, atol=1e-5)


def test_resampling_keeps_a_linear_ramp_and_its_ends():
    z, y, x = np.meshgrid(np.arange(8.0), np.arange(6.0), np.arange(4.0), indexing="ij")
    ramp = (2 * z + 3 * y - x)[..., None]
    out = resample(ramp, (4, 12, 4))[..., 0]
    # half-pixel centres: new index i sits at (i + 0.5) · old / new − 0.5 along each axis, clamped at the ends
    at = lambda i, old, new: np.clip((i + 0.5) * old / new - 0.5, 0, old - 1)  # noqa: E731
    zz, yy, xx = np.meshgrid(at(np.arange(4), 8, 4), at(np.arange(12), 6, 12), np.arange(4.0), indexing="ij")
    assert np.allclose(out, 2 * zz + 3 * yy - xx, atol=1e-5)


def test_a_nifti_volume_gives_a_montage_and_a_nifti_map_on_its_own_grid(keras, saved):
    out = saved / "out"
    result = CliRunner().invoke(cli, ["gradcam", str(saved / "scan.nii.gz"), "--model", str(saved / "c3d.keras"),
                                      "-o", str(out), "--precision", "fp32", "--slices", "3"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["image"].endswith("scan.nii.gz") and record["nifti"].endswith(".nii.gz")
    written = nibabel.load(str(out / record["nifti"]))
    assert written.shape == (9, 20, 14) and np.allclose(written.affine, AFFINE)
    (e,) = Explainer(str(saved / "c3d.keras"), precision="fp32").explain(str(saved / "scan.nii.gz"))
    assert np.allclose(np.asarray(written.dataobj), e.heatmap(), atol=0.5 / 255 + 1e-6)  # in 8 bits, on its grid
    fed = resample(np.asarray(nibabel.load(str(saved / "scan.nii.gz")).dataobj)[..., None], GRID)[..., 0]
    assert r(e.map, tape(keras, keras.models.load_model(saved / "c3d.keras"), fed, e.class_index)[0]) >= 0.999
    from PIL import Image

    with Image.open(out / record["overlay"]) as montage:
        assert montage.height > 3 * 160  # a row of tiles per axis
    assert "scan.nii.gz\t1\t" in result.stdout  # the predictions, as for a picture


def test_a_bad_volume_fails_alone(saved, tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    np.save(tmp_path / "good.npy", volume(6, (5, 10, 10)))
    result = CliRunner().invoke(cli, ["gradcam", str(tmp_path), "--model", str(saved / "c3d.keras"),
                                      "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.nii.gz: cannot read it as a volume" in errors[0]
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert record["image"].endswith("good.npy") and (tmp_path / "out" / record["nifti"]).is_file()


def test_a_tiff_stack_and_a_dicom_series_are_volumes(saved, tmp_path):
    import tifffile

    pydicom = pytest.importorskip("pydicom")
    stack = volume(7, (6, 12, 10))
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    series = tmp_path / "series"
    series.mkdir()
    values = (np.random.default_rng(8).integers(0, 1000, (4, 12, 10))).astype(np.uint16)
    for k, name in zip(range(4), ("c.dcm", "a.dcm", "d.dcm", "b.dcm")):  # the names out of order: positions say
        write_slice(pydicom, series / name, values[k], z=2.0 * k)
    made = Explainer(str(saved / "c3d.keras"), precision="fp32")
    tiff, dicom = made.explain([str(tmp_path / "stack.tif"), str(series)])
    assert np.allclose(tiff.image, made.explain(stack)[0].image) and tiff.grid.kind == "volume"
    assert dicom.grid.shape == (4, 12, 10)
    # slices stacked by position; a row's step is the row spacing (0.7 mm), a column's 0.6, a slice's 2; LPS to RAS
    assert np.allclose(dicom.grid.affine[:3, 0], [0, 0, 2.0])
    assert np.allclose(dicom.grid.affine[:3, 1], [0, -0.7, 0]) and np.allclose(dicom.grid.affine[:3, 2], [-0.6, 0, 0])
    expected = Explainer(str(saved / "c3d.keras"), precision="fp32").explain(values.astype(np.float32) * 2.0 - 5.0)
    assert np.allclose(dicom.map, expected[0].map, atol=1e-5)  # rescaled by its slope and intercept, in order


def write_slice(pydicom, path, pixels: np.ndarray, z: float) -> None:
    """One CT slice: axial orientation, 0.7 mm rows, 0.6 mm columns, at height z; stored values · 2 − 5."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [0.7, 0.6]
    ds.RescaleSlope, ds.RescaleIntercept = 2, -5
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_evaluate_deletes_a_volumes_voxels_in_the_maps_order(keras):
    from explain_cli.render.heatmaps import normalise

    model = conv3d(keras)
    x = volume(9)
    made = Explainer(model, precision="fp32")
    evaluation = made.evaluate(x, methods=("gradcam", "random"), steps=8)
    record = next(r for r in evaluation.records if r["method"] == "gradcam")
    (e,) = made.explain(x, classes=record["class_index"])
    order = np.argsort(-resample(normalise(e.map), GRID).ravel(), kind="stable")
    p = lambda v: float(np.asarray(model(v.reshape(1, *GRID, 1)))[0, e.class_index])  # noqa: E731
    by_hand = []
    for t in range(9):  # step t sets the first round(t · voxels / 8) voxels by the map to 0
        deleted = x.ravel().copy()
        deleted[order[:int(np.floor(t * x.size / 8 + 0.5))]] = 0.0
        by_hand.append(p(deleted))
    assert np.allclose(record["deletion_curve"], by_hand, atol=1e-5)
    assert record["insertion_curve"][-1] == pytest.approx(p(x), abs=1e-5)
    assert {s.method for s in evaluation.summaries} == {"gradcam", "random"}


def segmenter3d(keras):
    """A Conv3D segmenter of three classes per voxel, at half the volume's resolution, ending in a softmax layer."""
    keras.utils.set_random_seed(23)
    inputs = keras.Input((*GRID, 1))
    x = keras.layers.Conv3D(6, 3, strides=(1, 2, 2), padding="same", activation="relu", name="features")(inputs)
    scores = keras.layers.Conv3D(3, 1, name="scores")(x)
    return keras.Model(inputs, keras.layers.Softmax()(scores))


def test_a_3d_segmenter_explains_each_class_over_its_voxels(keras, tmp_path):
    import tensorflow as tf

    model = segmenter3d(keras)
    x = volume(10)
    found = Explainer(model, layer="features", precision="fp32").explain(x)
    probe = keras.Model(model.inputs, [model.get_layer("features").output, model.get_layer("scores").output])
    for e in found:
        with tf.GradientTape() as t:
            features, scores = probe(tf.constant(x[None, ..., None]))
            region = tf.cast(tf.argmax(scores, -1) == e.class_index, tf.float32)  # where the class is predicted
            score = tf.reduce_sum(scores[..., e.class_index] * region)
        g, a = t.gradient(score, features)[0].numpy(), features[0].numpy()
        expected = np.maximum((a * g.mean(axis=(0, 1, 2))).sum(-1), 0)
        assert e.target.kind == "region" and r(e.map, expected) >= 0.999
        assert e.share == pytest.approx(float(region.numpy().mean()), abs=1e-6)
    model.save(tmp_path / "seg.keras")
    nibabel.save(nibabel.Nifti1Image(x, AFFINE), tmp_path / "scan.nii.gz")
    result = CliRunner().invoke(cli, ["segment", str(tmp_path / "scan.nii.gz"), "--model", str(tmp_path / "seg.keras"),
                                      "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    labels = nibabel.load(str(tmp_path / "out" / records[0]["segmentation_nifti"]))
    classes = np.argmax(np.asarray(model(x[None, ..., None]))[0], -1)  # (6, 6, 5): nearest back to (6, 12, 10)
    assert np.allclose(labels.affine, AFFINE) and np.array_equal(np.asarray(labels.dataobj),
                                                                 classes.repeat(2, axis=1).repeat(2, axis=2))
    assert {rec["class_index"] for rec in records} == {int(c) for c in np.unique(classes)}


def test_without_nibabel_a_nifti_gets_one_line_naming_the_extra(saved, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if the volumes extra were not installed
    np.save(tmp_path / "plain.npy", volume(11))
    result = CliRunner().invoke(cli, ["gradcam", str(saved / "scan.nii.gz"), str(tmp_path / "plain.npy"), "--model",
                                      str(saved / "c3d.keras"), "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert result.exit_code == 1
    assert "scan.nii.gz: reading it needs nibabel: pip install 'explain-cli[volumes]'" in result.stderr
    assert "warning: volumes' maps are drawn but not written as NIfTI: pip install 'explain-cli[volumes]'" in \
        result.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert record["image"].endswith("plain.npy") and "nifti" not in record and (tmp_path / "out" / record["overlay"]).is_file()
