"""--precision int8: the forward-only passes quantised by NNCF on OpenVINO, calibrated on the run's own images (or those
given), cached beside the float32 conversion; maps close to fp32's on a trained model; never chosen by `auto`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import Explainer, errors
from explain_cli.cli.main import cli
from explain_cli.errors import BadArgument, ExplainError
from explain_cli.model import quantizing
from explain_cli.model import runtime as offload
from explain_cli.steps import precision as precisions

needs_int8 = pytest.mark.skipif(not errors.installed("nncf", "openvino"),
                                reason="the int8 extra is not installed: pip install -e '.[test,int8]'")


@pytest.fixture(scope="module")
def shape_photos(tmp_path_factory) -> list[str]:
    """24 pictures of the trained shapes model's classes, its own kind of image."""
    from tests import synthetic

    folder = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(21)
    paths = []
    for i in range(24):
        paths.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(synthetic.make_shape(rng).image).save(paths[-1])
    return paths


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@needs_int8
def test_int8_predicts_and_explains_as_fp32_does_on_a_trained_model(shapes_model, shape_photos):
    """Measured, as the performance page states it: top-1 agreement, and Grad-CAM maps' Pearson r with fp32's."""
    model = str(shapes_model("none"))
    fp32 = Explainer(model, precision="fp32")
    int8 = Explainer(model, precision="int8", calibration=shape_photos)
    assert int8.precision == "int8"
    top = [[p.probabilities.argmax() for p in e.predict(shape_photos)] for e in (fp32, int8)]
    assert np.mean(np.equal(*top)) >= 0.95
    classes = dict(zip(shape_photos, (int(c) for c in top[0])))
    maps = [[x.map for x in e.explain(shape_photos, classes)] for e in (fp32, int8)]
    r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(*maps)]
    assert np.median(r) >= 0.99 and min(r) >= 0.95
    assert not all(np.array_equal(a, b) for a, b in zip(*maps))  # int8 did run: the maps are not fp32's own


@needs_int8
def test_the_command_line_calibrates_once_keeps_stdout_for_data_and_reads_it_back(shapes_model, shape_photos,
                                                                                 tmp_path):
    folder = Path(shape_photos[0]).parent
    env = {**os.environ, "EXPLAIN_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", str(shapes_model("none")),
               "--precision", "int8", "-v"]
    first = subprocess.run([*command, "-o", str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    rows = first.stdout.splitlines()
    assert len(rows) == 24 * 4 and all(len(row.split("\t")) == 5 for row in rows)  # no progress bar among the data
    assert "runtime openvino for the feature pass up to" in first.stderr and "(quantized in" in first.stderr
    again = subprocess.run([*command, "-o", str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
    assert "(from the cache; int8" in again.stderr and again.stdout == first.stdout
    quantized = [p.name for p in (tmp_path / "cache").iterdir() if "-int8-" in p.name]
    assert len(quantized) == 1  # the same seeded sample: the same calibration, one int8 model
    fewer = _run("predict", *shape_photos[:3], "--model", shapes_model("none"), "--precision", "int8",
                 "--calibration", shape_photos[5])
    assert fewer.exit_code == 0, fewer.output


@needs_int8
def test_the_first_batch_calibrates_where_no_images_are_given(shapes_model, shape_photos):
    said: list[str] = []
    int8 = Explainer(str(shapes_model("none")), precision="int8", on_note=lambda note, loud: said.append(note))
    fp32 = Explainer(str(shapes_model("none")), precision="fp32")
    maps = [[x.map for x in e.explain(shape_photos[:4], classes=0)] for e in (int8, fp32)]
    assert any("to be quantized on its first batch" in note for note in said), said
    assert not any("could not take" in note for note in said), said
    assert all(np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98 for a, b in zip(*maps))


def test_calibration_takes_a_seeded_sample_of_the_images():
    items = list(range(500))
    chosen = quantizing.sample(items, seed=3)
    assert len(chosen) == quantizing.SAMPLE and chosen == sorted(chosen) and chosen == quantizing.sample(items, 3)
    assert chosen != quantizing.sample(items, 4) and quantizing.sample(items[:10], 3) == items[:10]


def test_a_calibration_batch_is_keyed_by_its_values():
    batch = np.zeros((2, 4, 4, 3), np.float32)
    changed = batch.copy()
    changed[1, 2, 2, 0] = 1.0
    assert quantizing.key(batch) == quantizing.key(batch.copy()) != quantizing.key(changed)
    assert quantizing.key(batch) != quantizing.key(batch.reshape(4, 2, 4, 3))


@pytest.mark.parametrize("flags", [set(), {"avx512_bf16"}, {"amx_bf16", "avx512_bf16"}])
def test_auto_never_chooses_int8_it_changes_maps(flags):
    for methods in ([], ["gradcam"], ["scorecam", "rise"], ["saliency"]):
        assert precisions.resolve("auto", methods, flags)[0] in ("fp32", "bf16")
    assert precisions.resolve("int8", ["gradcam"], flags) == ("int8", "--precision int8")


def test_int8_runs_on_openvino_and_says_so_where_it_cannot(tiny_model, shape_photos, keras, monkeypatch):
    photo = shape_photos[0]
    done = _run("gradcam", photo, "--model", tiny_model, "--precision", "int8", "--runtime", "tensorflow")
    assert done.exit_code != 0
    assert done.stderr.strip().splitlines()[-1] == ("error: --precision int8: its forward passes run on OpenVINO, "
                                                    "not --runtime tensorflow")
    in_memory = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(2)])
    if offload.installed("openvino") and errors.installed("nncf"):
        with pytest.raises(ExplainError, match=r"^--precision int8: a model in memory keeps to TensorFlow"):
            Explainer(in_memory, precision="int8")
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if it were not installed
    with pytest.raises(ExplainError, match=r"needs OpenVINO and NNCF: pip install 'explain-cli\[int8\]'"):
        Explainer(str(tiny_model), precision="int8")


def test_calibration_images_are_for_int8_alone(tiny_model, shape_photos):
    photo = shape_photos[0]
    with pytest.raises(BadArgument, match="calibrates --precision int8, and the precision is fp32"):
        Explainer(str(tiny_model), precision="fp32", calibration=[str(photo)])
    done = _run("predict", photo, "--model", tiny_model, "--calibration", photo)
    assert done.exit_code == 2 and "--calibration: calibrates --precision int8, and the precision is auto" in done.stderr


def test_a_model_file_only_a_runtime_runs_is_not_quantised(tmp_path, shape_photos):
    file = tmp_path / "model.tflite"
    file.write_bytes(b"")  # refused before it is read
    done = _run("predict", shape_photos[0], "--model", file, "--precision", "int8")
    assert done.exit_code == 2
    assert f"--precision: {file}: int8 quantises a Keras model's passes; this file runs as it is" in done.stderr
