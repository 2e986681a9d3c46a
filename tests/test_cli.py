"""The command line, end to end through Click's CliRunner, mostly on the tiny trained model."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.cli.main import cli
from tests.synthetic import SHAPE_CLASSES


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=stdin, catch_exceptions=False)


@pytest.fixture
def tiny(tiny_model, tiny_labels) -> list[str]:
    return ["--model", str(tiny_model), "--labels", str(tiny_labels)]


def tsv_rows(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_gradcam_folder_mirrors_the_tree_and_writes_a_manifest(tiny, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = run("gradcam", photo_tree, "-o", out, *tiny)
    assert result.exit_code == 0, result.output

    records = manifest(out)
    assert [r["image"] for r in records] == [str(photo_tree / n) for n in ("a.png", "b.jpg", "sub/a.png")]
    for record in records:
        label = record["label"]
        assert label in SHAPE_CLASSES and record["class_index"] == SHAPE_CLASSES.index(label)
        assert record["method"] == "gradcam" and record["layer"] == "conv3" and record["rank"] == 1
        assert record["model"] == "tiny.keras" and record["heatmap"] is None
        assert 0.0 < record["score"] <= 1.0
    stems = [r["overlay"].split(".gradcam.")[0] for r in records]
    assert stems == ["a", "b", "sub/a"]  # two a.png never collide

    # Each overlay has the original image's size (not the model's 64x64) and blends the original.
    for record, size in zip(records, ((96, 80), (64, 64), (70, 120))):
        overlay = Image.open(out / record["overlay"])
        assert overlay.format == "JPEG" and overlay.size == size
    assert not (out / "notes.gradcam").exists() and len(list(out.rglob("*.jpg"))) == 3

    rows = tsv_rows(result.stdout)
    assert len(rows) == 3 * 3  # --top 5 capped by the 3 classes the model has
    first = [r for r in rows if r[0] == str(photo_tree / "a.png")]
    assert [r[1] for r in first] == ["1", "2", "3"]
    probabilities = [float(r[4]) for r in first]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-3
    assert first[0][3] == records[0]["label"] and int(first[0][2]) == records[0]["class_index"]
    # For the report: each line also gives its image's top-5, the prediction's entropy and where the image is.
    assert [[int(r[2]), r[3]] for r in first] == [p[:2] for p in records[0]["predictions"]]
    assert [p[2] for p in records[0]["predictions"]] == pytest.approx(probabilities, abs=1e-6)
    spread = np.array(probabilities)
    assert records[0]["entropy"] == pytest.approx(-(spread * np.log(spread)).sum(), abs=1e-4)
    assert records[0]["source"] == str((photo_tree / "a.png").absolute())
    assert "tiny.keras: gradcam at layer conv3 (default)" in result.stderr


def test_top_k_heatmaps_and_figures(tiny, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = run("gradcam", photo_tree / "b.jpg", "-o", out, "--top-k", "3", "--save-heatmap", "--figure",
                 "--image-format", "png", *tiny)
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert [r["rank"] for r in records] == [1, 2, 3]
    assert sorted(r["class_index"] for r in records) == [0, 1, 2]
    for record in records:
        assert record["overlay"] == f"b.gradcam.{record['class_index']}-{record['label']}.png"
        heatmap = np.load(out / record["heatmap"])
        assert heatmap.shape == (16, 16) and heatmap.min() >= 0 and heatmap.max() <= 1
        assert Image.open(out / record["overlay"]).format == "PNG"
        assert Image.open(out / record["figure"]).format == "PNG"


def test_class_by_name_and_number(tiny, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = run("gradcam", photo_tree / "b.jpg", "-o", out, "--class", "green", "--class", "0", *tiny)
    assert result.exit_code == 0, result.output
    assert [(r["class_index"], r["label"]) for r in manifest(out)] == [(1, "green"), (0, "red")]
    assert (out / "b.gradcam.1-green.jpg").is_file() and (out / "b.gradcam.0-red.jpg").is_file()


def test_unknown_class_suggests_close_names(tiny, photo_tree, tmp_path):
    result = run("gradcam", photo_tree / "b.jpg", "-o", tmp_path / "out", "--class", "gren", *tiny)
    assert result.exit_code == 2
    assert "unknown class 'gren'; did you mean: green?" in result.stderr
    assert "Traceback" not in result.output


def test_class_out_of_range(tiny, photo_tree, tmp_path):
    result = run("gradcam", photo_tree / "b.jpg", "-o", tmp_path / "out", "--class", "7", *tiny)
    assert result.exit_code == 2
    assert "class 7 is out of range: the model has 3 classes (0-2)" in result.stderr


def test_unknown_layer_lists_candidates(tiny, photo_tree, tmp_path):
    result = run("gradcam", photo_tree / "b.jpg", "-o", tmp_path / "out", "--layer", "conv9", *tiny)
    assert result.exit_code == 2
    assert "unknown layer 'conv9': did you mean conv1, conv2, conv3?" in result.stderr
    assert "last explainable layers: conv1, pool1, conv2, pool2, conv3 (see `explain layers`)" in result.stderr
    assert "default: conv3" in result.stderr


def test_layer_without_a_feature_map_is_refused(tiny, photo_tree, tmp_path):
    result = run("gradcam", photo_tree / "b.jpg", "-o", tmp_path / "out", "--layer", "gap", *tiny)
    assert result.exit_code == 2
    assert "layer 'gap' has output shape (None, 32): Grad-CAM needs a 4-D feature map" in result.stderr


def test_missing_and_corrupt_files_fail_alone(tiny, photo_tree, tmp_path):
    text = tmp_path / "text.png"
    text.write_text("definitely not a png")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((photo_tree / "b.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    result = run("gradcam", tmp_path / "nope.png", text, truncated, photo_tree / "b.jpg", "-o", out, *tiny)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[:2] == [
        f"error: {tmp_path / 'nope.png'}: no such file",
        f"error: {text}: not an image (Pillow cannot identify it)",
    ]
    assert errors[2].startswith(f"error: {truncated}: cannot decode: ") and len(errors) == 3
    assert [r["image"] for r in manifest(out)] == [str(photo_tree / "b.jpg")]
    assert {r[0] for r in tsv_rows(result.stdout)} == {str(photo_tree / "b.jpg")}
    assert "1 of 4 images done, 1 explanations written to" in result.stderr and "3 failed" in result.stderr
    assert "Traceback" not in result.output


def test_json_lines_and_stdin_paths(tiny, photo_tree):
    paths = f"{photo_tree / 'b.jpg'}\n{photo_tree / 'sub' / 'a.png'}\n"
    result = run("predict", "-", "--json", "--top", "2", *tiny, stdin=paths)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths.split()
    for line in lines:
        assert [p["rank"] for p in line["predictions"]] == [1, 2]
        assert {"class_index", "label", "probability"} <= set(line["predictions"][0])


def test_predict_matches_gradcam_predictions(tiny, photo_tree, tmp_path):
    predicted = run("predict", photo_tree, *tiny)
    explained = run("gradcam", photo_tree, "-o", tmp_path / "out", *tiny)
    assert predicted.exit_code == explained.exit_code == 0
    assert tsv_rows(predicted.stdout) == tsv_rows(explained.stdout)
    assert not (photo_tree / "explanations").exists()


def test_output_folder_inside_the_input_folder_is_not_read(tiny, photo_tree):
    out = photo_tree / "explanations"
    assert run("gradcam", photo_tree, "-o", out, *tiny).exit_code == 0
    again = run("gradcam", photo_tree, "-o", out, *tiny)
    assert again.exit_code == 0
    assert {r[0] for r in tsv_rows(again.stdout)} == {str(photo_tree / n) for n in ("a.png", "b.jpg", "sub/a.png")}


def test_layers_lists_feature_maps_and_marks_the_default(tiny):
    result = run("layers", *tiny)
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [r[-4] if r[0] == "*" else r[0] for r in rows][:1] == ["rescale"]
    names = [r[1] if r[0] == "*" else r[0] for r in rows]
    assert names == ["rescale", "conv1", "pool1", "conv2", "pool2", "conv3"]
    assert rows[-1][:2] == ["*", "conv3"] and "(16, 16, 32)" in result.stdout


def test_class_and_top_k_are_exclusive(tiny, photo_tree):
    result = run("gradcam", photo_tree, "--class", "red", "--top-k", "2", *tiny)
    assert result.exit_code == 2 and "--class and --top-k are exclusive" in result.stderr


@pytest.mark.parametrize(
    "option, message",
    [
        (["--alpha", "1.5"], "Invalid value for '--alpha': 1.5 is not in the range 0.0<=x<=1.0"),
        (["--colormap", "nope"], "unknown matplotlib colormap 'nope'"),
        (["--model", "resnet5"], "'resnet5' is neither a built-in model nor an existing file; did you mean resnet50"),
    ],
)
def test_bad_options_are_usage_errors(option, message, photo_tree):
    result = run("gradcam", photo_tree, *option)
    assert result.exit_code == 2 and message in result.stderr


def test_labels_file_must_match_the_outputs(tiny_model, photo_tree, tmp_path):
    labels = tmp_path / "two.txt"
    labels.write_text("red\ngreen\n")
    result = run("predict", photo_tree, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {labels}: has 2 labels but the model has 3 outputs"


def test_corrupt_model_file_is_one_line(photo_tree, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a zip")
    result = run("predict", photo_tree, "--model", bad)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {bad}: cannot load the model: ") and result.stderr.count("\n") == 1


def test_offline_imagenet_download_says_how_to_pass_weights(photo_tree, tmp_path, monkeypatch, keras):
    """No network and nothing cached: one line naming the URL, the cache folder and --weights PATH."""
    from urllib.error import URLError

    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise URLError("no network here")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(file_utils, "_get_keras_home", lambda: str(tmp_path / "keras-home"), raising=False)
    result = run("predict", photo_tree, "--model", "vgg16")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cannot download the ImageNet weights for vgg16 from https://")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in line
    assert "pass --weights PATH" in line and "keras-home" in line
    assert result.stdout == ""


def test_resnet50_with_local_weights(resnet50_weights, tmp_path):
    """The default model through --weights PATH: the README's first command without the network."""
    out = tmp_path / "out"
    cat = Path(__file__).parent.parent / "sample_images" / "cat.jpg"
    result = run("gradcam", cat, "--weights", resnet50_weights, "-o", out)
    assert result.exit_code == 0, result.output
    (record,) = manifest(out)
    assert record["overlay"] == f"cat.gradcam.{record['class_index']}-{record['label']}.jpg"
    assert record["layer"] == "conv5_block3_out" and record["model"] == "resnet50"
    assert Image.open(out / record["overlay"]).size == Image.open(cat).size
    rows = tsv_rows(result.stdout)
    assert len(rows) == 5 and rows[0][2] == str(record["class_index"]) and rows[0][3] == record["label"]


def test_nested_user_model_with_1000_imagenet_names(keras, tmp_path, photo_tree):
    """A user model with 1000 outputs and no --labels gets ImageNet's names; a nested layer by path."""
    inputs = keras.Input((32, 32, 3))
    inner = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, name="c")], name="block")
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    path = tmp_path / "wide.h5"
    keras.Model(inputs, keras.layers.Dense(1000)(x)).save(path)
    out = tmp_path / "out"
    result = run("gradcam", photo_tree / "b.jpg", "--model", path, "--layer", "block/c", "-o", out)
    assert result.exit_code == 0, result.output
    (record,) = manifest(out)
    from explain_cli.inputs.labels import imagenet

    assert record["layer"] == "block/c" and record["label"] == imagenet().names[record["class_index"]]
    listed = run("layers", "--model", path)
    assert listed.stdout.split() == ["*", "block/c", "(30,", "30,", "4)"]  # nested layers listed by path


def test_legacy_h5_weights_load_like_weights_h5(resnet50_weights, resnet50_legacy_h5, photo_tree):
    """The legacy .h5 layout Keras downloads loads through --weights too, with the same predictions."""
    image = photo_tree / "b.jpg"
    modern = run("predict", image, "--weights", resnet50_weights)
    old = run("predict", image, "--weights", resnet50_legacy_h5)
    assert modern.exit_code == old.exit_code == 0
    assert tsv_rows(old.stdout) == tsv_rows(modern.stdout) and len(tsv_rows(old.stdout)) == 5


def test_imagenet_weights_come_from_the_keras_cache_without_the_network(
    resnet50_legacy_h5, resnet50_weights, photo_tree, tmp_path, monkeypatch, keras
):
    """--weights imagenet with the file in $KERAS_HOME/models: loaded as is, nothing fetched or re-hashed."""
    import shutil

    import keras.src.utils.file_utils as file_utils

    def no_network(*args, **kwargs):
        raise AssertionError("the cached weights file should have been used")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copy(resnet50_legacy_h5, tmp_path / "home" / "models")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    cached = run("predict", photo_tree / "b.jpg")
    local = run("predict", photo_tree / "b.jpg", "--weights", resnet50_weights)
    assert cached.exit_code == 0, cached.output
    assert tsv_rows(cached.stdout) == tsv_rows(local.stdout)


def test_weights_for_another_model_are_one_line(vgg16_weights, photo_tree):
    result = run("predict", photo_tree / "b.jpg", "--weights", vgg16_weights)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {vgg16_weights}: cannot load these weights into resnet50: ")
    assert result.stderr.count("\n") == 1


def test_top_k_beyond_the_classes_is_a_usage_error(tiny, photo_tree):
    result = run("gradcam", photo_tree, "--top-k", "4", *tiny)
    assert result.exit_code == 2 and "4 is more than the model's 3 classes" in result.stderr


def test_a_class_named_twice_is_explained_once(tiny, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = run("gradcam", photo_tree / "b.jpg", "-o", out, "--class", "blue", "--class", "2", *tiny)
    assert result.exit_code == 0 and [r["class_index"] for r in manifest(out)] == [2]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_written_gets_the_mode_new_files_get(umask, tiny, photo_tree, tmp_path):
    """0666 masked by the umask, as for any new file of the user's (not the temporary file's 0600)."""
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        assert run("gradcam", photo_tree, *tiny, "-o", out, "--save-heatmap", "--figure").exit_code == 0
        assert run("saliency", photo_tree / "b.jpg", *tiny, "-o", out).exit_code == 0
        assert run("activations", photo_tree / "b.jpg", *tiny, "-o", out, "--layer", "conv3").exit_code == 0
        assert run("classviz", "red", *tiny, "-o", out, "--steps", "2").exit_code == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    kinds = ("manifest.jsonl", ".gradcam.", ".npy", ".figure.png", ".vanilla.", ".map.png", ".activations.",
             "classviz.")
    assert all(any(kind in name for name in modes) for kind in kinds), sorted(modes)
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


@pytest.mark.parametrize("command, present, absent", [
    ("gradcam", {"--top": "Predictions printed per image.", "--json": "Print predictions as JSON lines"}, ()),
    ("predict", {"--top": "Predictions printed per image.", "--json": "Print predictions as JSON lines"}, ()),
    ("evaluate", {"--json": "Print each method's means as JSON lines"}, ("--top",)),
    ("activations", {}, ("--top", "--json")),
])
def test_each_commands_help_says_what_an_option_does_there(command, present, absent):
    """evaluate prints metrics, not predictions; activations prints nothing: neither offers what it does not do."""
    text = " ".join(run(command, "--help").stdout.split())
    for option, words in present.items():
        assert re.search(rf"{option}\b[^-]*?{re.escape(words)}", text), (command, option)
    for option in absent:
        assert not re.search(rf"{option}(?![-\w])", text), (command, option)
        refused = run(command, "x.png", option)
        assert refused.exit_code == 2 and f"No such option '{option}'" in refused.stderr
