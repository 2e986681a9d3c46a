"""Several labels per image, on a model trained here on images holding several shapes at once: each label at the
threshold is explained and its map lands on its shape; the summary's per-label scores, macro F1 and mAP are what
numpy computes from the same predictions; the manifest and the report show label sets against truth sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.evaluation import metrics
from explain_cli.io import report
from explain_cli.cli.main import cli
from tests.synthetic import SHAPES, make_shapes


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def scenes_on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("several")
    rng = np.random.default_rng(61)
    scenes = [make_shapes(rng) for _ in range(16)]
    rows = ["image,labels"]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(root / f"{i:02d}.png")
        rows.append(f"{i:02d}.png," + ";".join(SHAPES[c] for c in sorted(scene.present)))
    (root / "truth.csv").write_text("\n".join(rows) + "\n")
    (root / "labels.txt").write_text("\n".join(SHAPES) + "\n")
    return root, scenes


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP written out as a sum over the positives: the precision at each positive's rank, averaged."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    found, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            found += 1
            total += found / rank
    return total / max(found, 1)


def test_every_label_at_the_threshold_is_explained_on_its_shape_and_summed_up_as_numpy_does(
        multilabel_model, scenes_on_disk, tmp_path):
    root, scenes = scenes_on_disk
    out = tmp_path / "out"
    result = run("gradcam", root, "--model", multilabel_model, "--labels", root / "labels.txt", "--truth",
                 root / "truth.csv", "-o", out, "--precision", "fp32", "--report")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    from explain_cli import Explainer

    probabilities = Explainer(multilabel_model, precision="fp32").predict([s.image for s in scenes], top=4)
    shown = np.stack([p.probabilities for p in probabilities])
    expected = [(f"{i:02d}.png", c) for i in range(16) for c in np.argsort(-shown[i], kind="stable")
                if shown[i, c] >= 0.5]
    assert [(Path(r["image"]).name, r["class_index"]) for r in records] == expected
    assert all(r["multi_label"] and r["head"] == "labels" for r in records)

    energies, peaks = [], []
    explainer = Explainer(multilabel_model, precision="fp32")
    for record in records:
        scene = scenes[int(Path(record["image"]).stem)]
        boxes = [box for label, box in scene.boxes if label == record["class_index"]]
        if not boxes:
            continue  # a label predicted that is not there: no box to land in
        heat = explainer.explain(scene.image, classes=record["class_index"])[0].heatmap()
        inside = np.zeros(heat.shape, bool)  # every shape of the label: a scene may hold two
        for top, left, bottom, right in boxes:
            inside[top:bottom, left:right] = True
        energies.append(heat[inside].sum() / max(heat.sum(), 1e-9))
        peaks.append(inside.flat[np.argmax(heat)])
    # The maps land on their shapes: most of their energy inside the shapes' tight boxes, none under 0.3 of it, and
    # nearly all peak inside (measured: energy 0.63 on average, 0.32 the least, 23 of 28 maps at 0.5 or more; Grad-CAM
    # at 32 × 32, upsampled, spills past a box's edges, and a label's map can light a look-alike shape beside its own)
    assert len(energies) >= 20 and np.mean(energies) >= 0.5 and min(energies) >= 0.3 and np.mean(peaks) >= 0.85, str(
        [round(float(e), 3) for e in energies] + [float(np.mean(peaks))])

    truth = np.zeros_like(shown, dtype=bool)
    for i, scene in enumerate(scenes):
        truth[i, sorted(scene.present)] = True
    predicted = shown >= 0.5
    tp, fp, fn = ((predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0))
    f1 = [2 * t / (2 * t + p + n) if (2 * t + p + n) else 0.0 for t, p, n in zip(tp, fp, fn)]
    aps = [average_precision(shown[:, c], truth[:, c]) for c in range(len(SHAPES)) if truth[:, c].any()]
    assert f"labels at 0.5: macro F1 {np.mean(f1):.3f}, mAP {np.mean(aps):.3f} over 16 images with truth" in \
        result.stderr
    for c, name in enumerate(SHAPES):
        precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        assert re.search(rf"{name}\s+precision {precision:.3f}, recall {tp[c] / max(tp[c] + fn[c], 1):.3f}, "
                         rf"F1 {f1[c]:.3f}, AP {average_precision(shown[:, c], truth[:, c]):.3f}", result.stderr)

    cards = json.loads(re.search(r'id="explain-data">(.*?)</script>', (out / "report.html").read_text(), re.S)
                       .group(1))["cards"]
    first = next(c for c in cards if c["image"].endswith("00.png"))
    assert first["truth_label"] == [SHAPES[c] for c in sorted(scenes[0].present)]
    assert [label for _, label, _ in first["labels"]] == [SHAPES[c] for _, c in expected if _ == "00.png"]


def test_label_scores_against_hand_worked_cases():
    shown = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8], [0.4, 0.3]])
    truth = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], bool)
    scores = metrics.label_scores(shown, truth, 0.5)
    # label 0: predicted images 0 and 1 (TP 1, FP 1), missed image 3 (FN 1); ranked 0 (hit), 1, 3 (hit), 2
    assert scores.precision.tolist() == [0.5, 1.0] and scores.recall.tolist() == [0.5, 1.0]
    assert scores.average_precision[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert scores.average_precision[1] == pytest.approx(1.0)  # images 2 and 1 first: both hits
    assert scores.macro_f1 == pytest.approx((0.5 + 1.0) / 2)
    empty = metrics.label_scores(shown, np.zeros_like(truth), 0.5)
    assert np.isnan(empty.average_precision).all() and np.isnan(empty.mean_average_precision)


def test_the_report_counts_each_label(multilabel_model, scenes_on_disk, tmp_path):
    root, _ = scenes_on_disk
    out = tmp_path / "out"
    assert run("predict", root, "--model", multilabel_model, "--labels", root / "labels.txt").exit_code == 0
    result = run("gradcam", root / "00.png", "--model", multilabel_model, "--labels", root / "labels.txt",
                 "--truth", root / "truth.csv", "-o", out)
    assert result.exit_code == 0, result.output
    page = report.build(out)
    data = json.loads(re.search(r'id="explain-data">(.*?)</script>', page.read_text(), re.S).group(1))
    assert all(isinstance(c["truth"], list) and isinstance(c["labels"], list) for c in data["cards"])
