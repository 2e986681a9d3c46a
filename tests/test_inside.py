"""Seeing inside the network: activation grids and class model visualisation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.steps import compiled as explainer
from explain_cli.steps import activations as inside
from explain_cli.model import loading as models
from explain_cli.render import heatmaps as render
from explain_cli.model import cut as split
from explain_cli.cli.main import cli
from tests.synthetic import SHAPES


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_channel_grid_tiles_sixteen_per_row_with_each_channel_standardised():
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    activations = rng.normal(size=(3, 2, 20)) * np.arange(1, 21) + np.arange(20)  # channels differ in scale
    activations[..., 5] = 7.0  # a constant channel
    grid = render.channel_grid(activations, per_row=16)
    assert grid.shape == (2 * 3, 16 * 2, 3)  # 20 channels: a full row of 16, then 4

    viridis = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    for channel, (top, left) in ((0, (0, 0)), (17, (3, 2)), (5, (0, 10))):
        values = activations[..., channel]
        std = values.std()
        scaled = (values - values.mean()) / std * 64 + 128 if std > 0 else np.full_like(values, 128)
        expected = viridis[np.clip(np.rint(scaled), 0, 255).astype(int)]
        np.testing.assert_array_equal(grid[top : top + 3, left : left + 2], expected)
    assert not grid[3:, 8:].any()  # no channel after the 20th: left black


def test_default_layers_are_capped_and_spread(tiny_model):
    model = models.load(str(tiny_model))
    graph = explainer.graph_of(model)
    assert inside.default_activation_layers(graph, 16) == (["conv1", "pool1", "conv2", "pool2", "conv3"], 5)
    assert inside.default_activation_layers(graph, 3) == (["conv1", "conv2", "conv3"], 5)


def test_activations_cli_writes_one_grid_per_layer(tiny_model, photo_tree, tmp_path):
    out = tmp_path / "out"
    result = run("activations", photo_tree / "b.jpg", "--model", tiny_model, "-o", out)
    assert result.exit_code == 0, result.output
    sizes = {p.name: Image.open(p).size for p in out.iterdir() if p.suffix == ".png"}
    assert sizes == {
        "b.activations.conv1.png": (16 * 64, 64),  # 16 channels of 64×64: one row
        "b.activations.pool1.png": (16 * 32, 32),
        "b.activations.conv2.png": (16 * 32, 2 * 32),  # 32 channels: two rows
        "b.activations.pool2.png": (16 * 16, 2 * 16),
        "b.activations.conv3.png": (16 * 16, 2 * 16),
    }
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["grid"] for r in records} == set(sizes) and {r["method"] for r in records} == {"activations"}
    assert [r["layer"] for r in records] == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    few = run("activations", photo_tree / "b.jpg", "--model", tiny_model, "-o", tmp_path / "few", "--layer",
              "conv3", "--max-channels", "8")
    assert few.exit_code == 0 and Image.open(tmp_path / "few" / "b.activations.conv3.png").size == (8 * 16, 16)


def test_activations_refuses_a_flat_layer(tiny_model, photo_tree):
    result = run("activations", photo_tree, "--model", tiny_model, "--layer", "gap")
    assert result.exit_code == 2 and "'gap' has no 4-D output (or tokens on a grid) to draw" in result.stderr


def test_classviz_raises_the_class_logit_and_is_seeded(tiny_model, tiny_labels, tmp_path):
    model = models.load(str(tiny_model), labels_file=tiny_labels)
    graph = explainer.graph_of(model)
    settings = inside.ClassVizSettings(steps=40, jitter=2, blur_every=10, seed=5)
    final, _, logits = inside.class_visualisation(model, graph, 0, settings)
    start = logits[0]  # the seeded starting noise
    assert logits[-1] > start + 2.0, (start, logits[-1])
    # The image drawn for "red" is red where it matters: its red channel outweighs the others.
    assert final[..., 0].mean() > final[..., 1].mean() and final[..., 0].mean() > final[..., 2].mean()
    again, _, _ = inside.class_visualisation(model, graph, 0, settings)
    np.testing.assert_array_equal(final, again)


@pytest.mark.parametrize("preprocess", ["none", "caffe", "tf", "torch"])
def test_classviz_with_default_settings_draws_every_class_as_that_class(preprocess, shapes_model, shapes_labels,
                                                                      tmp_path):
    """Simonyan et al.'s property, for a model that rescales inside and for models fed caffe / tf / torch
    inputs: the image written for a class is classified as that class, and the class logit rose."""
    path = shapes_model(preprocess)
    model = models.load(str(path), labels_file=shapes_labels, preprocess=preprocess)
    predict = explainer.compile_predict(model, explainer.graph_of(model))
    for class_index, label in enumerate(SHAPES):
        result = run("classviz", label, "--model", path, "--labels", shapes_labels, "--preprocess", preprocess,
                     "-o", tmp_path)
        assert result.exit_code == 0, result.output
        start, end = (float(v) for v in re.search(r"logit (\S+) → (\S+) in", result.stderr).groups())
        assert end > start, (label, start, end)
        written = np.asarray(Image.open(result.stdout.strip()))
        probabilities = predict(written[None])[0]
        assert SHAPES[int(np.argmax(probabilities))] == label, (label, probabilities)
        logits = split.logits(explainer.graph_of(model))[0](model.preprocess(written[None].astype("float32")))
        assert float(logits[0, class_index]) == pytest.approx(end, abs=1e-3)  # the logit printed is the file's


def test_classviz_cli_writes_final_and_intermediate_images(tiny_model, tiny_labels, tmp_path):
    out = tmp_path / "out"
    result = run("classviz", "green", "--model", tiny_model, "--labels", tiny_labels, "--steps", "20",
                 "--every", "5", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out / 'classviz.1-green.png'}\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "classviz.1-green.png", "classviz.1-green.step0005.png", "classviz.1-green.step0010.png",
        "classviz.1-green.step0015.png", "manifest.jsonl",
    ]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["step"], r["file"]) for r in records] == [(5, "classviz.1-green.step0005.png"), (
        10, "classviz.1-green.step0010.png"), (15, "classviz.1-green.step0015.png"), (20, "classviz.1-green.png")]
    assert result.stderr.rstrip().endswith(f"→ {records[-1]['logit']:.3f} in 20 steps")
    assert Image.open(out / "classviz.1-green.png").size == (64, 64)
    assert "class 1 (green) logit" in result.stderr
