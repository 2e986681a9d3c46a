"""Class names, `--class` lookups, file names, atomic writes, manifest and stdout rows."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from explain_cli.inputs import labels
from explain_cli.io import files as output
from explain_cli.errors import ExplainError


def test_imagenet_index_ships_in_the_package():
    imagenet = labels.imagenet()
    assert len(imagenet) == 1000 and imagenet.name(281) == "tabby" and imagenet.ids[281] == "n02123045"


@pytest.mark.parametrize("spec, index", [("281", 281), ("tabby", 281), ("Tabby", 281), ("n02123045", 281),
                                         ("golden retriever", 207)])
def test_class_lookup(spec, index):
    assert labels.imagenet().resolve(spec) == index


def test_repeated_label_asks_for_the_number():
    with pytest.raises(ExplainError, match=r"'crane' is ambiguous: it names classes 134 \(n02012849\), 517 "):
        labels.imagenet().resolve("crane")


def test_unknown_label_suggests():
    with pytest.raises(ExplainError, match=r"unknown class 'tabbby'; did you mean: tabby"):
        labels.imagenet().resolve("tabbby")


def test_labels_file_count_must_match(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a\nb\n\n")
    assert labels.for_model(2, path).names == ("a", "b")
    with pytest.raises(ExplainError, match="has 2 labels but the model has 3 outputs"):
        labels.for_model(3, path)
    assert labels.for_model(4, None).names == ("0", "1", "2", "3")


def test_explanation_names():
    name = output.explanation_name(PurePosixPath("sub/cat"), "gradcam", 281, "tabby", "jpg")
    assert name == PurePosixPath("sub/cat.gradcam.281-tabby.jpg")
    assert output.safe_label("n/a: x y") == "n_a_x_y" and output.safe_label("///") == "class"


def test_write_atomic_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    output.write_atomic(target, b"abc")
    output.write_atomic(target, b"xyz")
    assert target.read_bytes() == b"xyz" and [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_manifest_appends_whole_lines(tmp_path):
    manifest = output.Manifest(tmp_path)
    manifest.append([{"image": "a.jpg", "rank": 1}])
    manifest.close()
    manifest = output.Manifest(tmp_path)
    manifest.append([{"image": "ü.jpg", "rank": 1}, {"image": "ü.jpg", "rank": 2}])
    manifest.close()
    with open(tmp_path / "manifest.jsonl", "a") as torn:
        torn.write('{"image": "killed mid-li')
    assert [(r["image"], r["rank"]) for r in output.read_manifest(tmp_path)] == [
        ("a.jpg", 1), ("ü.jpg", 1), ("ü.jpg", 2)]


def test_long_names_are_shortened_but_stay_unique():
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    name_a = output.explanation_name(PurePosixPath(long_a), "gradcam", 1, "x", "figure.png").name
    name_b = output.explanation_name(PurePosixPath(long_b), "gradcam", 1, "x", "figure.png").name
    assert len(name_a.encode()) <= output.MAX_NAME_BYTES and name_a != name_b
    assert name_a.startswith("aaaa") and name_a.endswith(".gradcam.1-x.figure.png") and "~" in name_a


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / "sub" / f"{output.TEMPORARY_PREFIX}999999999-abc.tmp"  # beyond any pid_max
    live = tmp_path / f"{output.TEMPORARY_PREFIX}{os.getpid()}-abc.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert output.remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists()


def test_top_predictions_and_stdout_styles():
    predictions = output.top_predictions(np.array([0.1, 0.6, 0.3]), ("a", "b", "c"), 2)
    assert [(p.rank, p.class_index, p.label) for p in predictions] == [(1, 1, "b"), (2, 2, "c")]

    tsv = output.format_predictions("x.jpg", predictions, "tsv")
    assert tsv == "x.jpg\t1\t1\tb\t0.600000\nx.jpg\t2\t2\tc\t0.300000\n"

    record = json.loads(output.format_predictions("x.jpg", predictions, "json"))
    assert record["image"] == "x.jpg" and record["predictions"][0] == {
        "rank": 1, "class_index": 1, "label": "b", "probability": pytest.approx(0.6)}

    table = output.format_predictions("x.jpg", predictions, "table")
    assert table.splitlines()[0] == "x.jpg" and "60.00%" in table
