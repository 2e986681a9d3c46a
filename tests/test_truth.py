"""Ground truth: --truth folders and --truth FILE.csv, accuracy in the summary, --class truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.io import files as output
from explain_cli.cli.main import cli
from tests.synthetic import SHAPE_CLASSES, make_scene


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def tiny(tiny_model, tiny_labels) -> list[str]:
    return ["--model", str(tiny_model), "--labels", str(tiny_labels)]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """val/<colour>/NN.png, as Keras' image_dataset_from_directory lays data out: 12 scenes."""
    rng = np.random.default_rng(21)
    root = tmp_path / "val"
    for i in range(12):
        scene = make_scene(rng)
        folder = root / SHAPE_CLASSES[scene.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(folder / f"{i:02d}.png")
    return root


def json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_truth_from_folders_reaches_json_manifest_and_summary(tiny, dataset, tmp_path):
    predicted = run("predict", dataset, *tiny, "--truth", "folders", "--json")
    assert predicted.exit_code == 0, predicted.output
    rows = json_rows(predicted.stdout)
    assert [r["truth"] for r in rows] == [SHAPE_CLASSES.index(Path(r["image"]).parent.name) for r in rows]
    top1 = np.mean([r["predictions"][0]["class_index"] == r["truth"] for r in rows])
    top5 = np.mean([r["truth"] in [p["class_index"] for p in r["predictions"][:5]] for r in rows])
    assert f"accuracy top-1 {top1:.1%}, top-5 {top5:.1%} over 12 images with truth" in predicted.stderr

    out = tmp_path / "out"
    explained = run("gradcam", dataset, *tiny, "--truth", "folders", "-o", out)
    assert explained.exit_code == 0, explained.output
    truth_of = {r["image"]: r["truth"] for r in rows}
    right = {r["image"]: r["predictions"][0]["class_index"] == r["truth"] for r in rows}
    for record in output.read_manifest(out):
        assert record["truth"] == truth_of[record["image"]] and record["correct"] == right[record["image"]]
        assert record["truth_label"] == SHAPE_CLASSES[record["truth"]]
    tsv = run("predict", dataset, *tiny, "--truth", "folders")
    assert {len(line.split("\t")) for line in tsv.stdout.splitlines()} == {5}  # the TSV keeps its columns


def test_a_folder_that_names_no_class_is_a_usage_error(tiny, dataset):
    (dataset / "red").rename(dataset / "rde")
    result = run("predict", dataset, *tiny, "--truth", "folders")
    assert result.exit_code == 2
    assert "--truth folders: 1 folder name(s) are no label of the model, first 'rde'" in result.stderr
    assert "close labels: red" in result.stderr


def test_truth_from_a_csv_by_printed_or_relative_path(tiny, dataset, tmp_path):
    images = sorted(dataset.rglob("*.png"))
    table = tmp_path / "truth.csv"
    lines = ["image,class", f"{images[0]},{images[0].parent.name}",  # the path as printed, a label
             f"{images[1].relative_to(dataset).as_posix()},{SHAPE_CLASSES.index(images[1].parent.name)}"]  # a number
    table.write_text("\n".join(lines) + "\n")
    result = run("predict", dataset, *tiny, "--truth", table, "--json")
    assert result.exit_code == 0, result.output
    truths = {r["image"]: r["truth"] for r in json_rows(result.stdout)}
    assert truths[str(images[0])] == SHAPE_CLASSES.index(images[0].parent.name)
    assert truths[str(images[1])] == SHAPE_CLASSES.index(images[1].parent.name)
    assert [truths[str(p)] for p in images[2:]] == [None] * 10  # not in the file: unknown
    assert "over 2 images with truth" in result.stderr

    table.write_text("image,class\n" + f"{images[0]},purple\n")
    bad = run("predict", dataset, *tiny, "--truth", table)
    assert bad.exit_code == 2 and f"{table}, line 2: unknown class 'purple'" in bad.stderr
    table.write_text("path,label\nx,y\n")
    header = run("predict", dataset, *tiny, "--truth", table)
    assert header.exit_code == 2 and "the header must name image, class; it has path, label" in header.stderr


def test_class_truth_explains_each_images_true_class(tiny, dataset, tmp_path):
    out = tmp_path / "out"
    result = run("gradcam", dataset, *tiny, "--truth", "folders", "--class", "truth", "-o", out)
    assert result.exit_code == 0, result.output
    records = output.read_manifest(out)
    assert len(records) == 12
    for record in records:
        assert record["class_index"] == record["truth"] == SHAPE_CLASSES.index(Path(record["image"]).parent.name)
        assert re.search(rf"\.gradcam\.{record['truth']}-{SHAPE_CLASSES[record['truth']]}\.jpg$", record["overlay"])
    alone = run("gradcam", dataset, *tiny, "--class", "truth", "-o", out)
    assert alone.exit_code == 2 and "--class truth needs --truth folders|FILE.csv" in alone.stderr


@pytest.mark.parametrize("command", [["cam", "--method", "eigencam"], ["saliency", "--method", "vanilla"]])
def test_truth_on_cam_and_saliency(command, tiny, dataset, tmp_path):
    out = tmp_path / "out"
    result = run(*command, dataset, *tiny, "--truth", "folders", "--class", "truth", "-o", out)
    assert result.exit_code == 0, result.output
    records = output.read_manifest(out)
    assert len(records) == 12 and all(r["class_index"] == r["truth"] for r in records)
    assert all(r["truth"] == SHAPE_CLASSES.index(Path(r["image"]).parent.name) for r in records)
