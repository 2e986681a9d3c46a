"""explain evaluate: each metric against a hand-worked case, then Grad-CAM against the random control."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.evaluation import evaluate
from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.model import precision
from explain_cli.cli.main import cli
from tests.synthetic import MARKS, SHAPES, make_mark, make_shape

# A 4×4 image whose object is the 2×2 block at rows 1-2, cols 1-2 (white on black); the "model" sees only
# the object: p(class 0) = the object's mean brightness, p(class 1) = 1 − p.
OBJECT = np.zeros((4, 4), bool)
OBJECT[1:3, 1:3] = True
IMAGE = np.where(OBJECT[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)


def sees_the_object(batch: np.ndarray) -> np.ndarray:
    p = batch[:, OBJECT, :].mean(axis=(1, 2)) / 255.0
    return np.stack([p, 1 - p], axis=1)


def test_deletion_of_the_object_first_drops_at_once_and_of_the_background_first_at_the_end():
    black = np.zeros_like(IMAGE)
    # 16 pixels, N = 4: each step removes 4. The object's mask removes the object at step 1: p = 1, 0, 0, 0, 0.
    exact = metrics.faithfulness(sees_the_object, IMAGE, black, OBJECT * 1.0, 0, 1.0, steps=4, batch_size=3)
    assert exact.deletion_curve == [1, 0, 0, 0, 0] and exact.deletion_auc == pytest.approx(0.5 / 4)
    assert exact.insertion_curve == [0, 1, 1, 1, 1] and exact.insertion_auc == pytest.approx(3.5 / 4)
    # The reversed map removes the 12 background pixels first: the object goes only at the last step.
    reverse = metrics.faithfulness(sees_the_object, IMAGE, black, 1.0 - OBJECT, 0, 1.0, steps=4, batch_size=5)
    assert reverse.deletion_curve == [1, 1, 1, 1, 0] and reverse.deletion_auc == pytest.approx(3.5 / 4)
    assert reverse.insertion_curve == [0, 0, 0, 0, 1]
    # A constant map is read in raster order: pixels 0-3 (no object), 4-7 (half of it: rows 1, cols 1-2), ...
    flat = metrics.faithfulness(sees_the_object, IMAGE, black, np.ones((4, 4)), 0, 1.0, steps=4, batch_size=32)
    assert flat.deletion_curve == [1, 1, 0.5, 0, 0]
    # Average Drop and Increase in Confidence: the image times the map. The mask keeps the object whole.
    assert (exact.average_drop, exact.increase_in_confidence) == (0.0, False)
    assert (reverse.average_drop, reverse.increase_in_confidence) == (1.0, False)
    half = metrics.faithfulness(sees_the_object, IMAGE, black, np.full((4, 4), 0.25), 0, 1.0, 4, 32)
    assert half.average_drop == pytest.approx(0.75)
    assert metrics.faithfulness(sees_the_object, IMAGE, black, np.full((4, 4), 0.25), 1, 0.0, 4, 32) \
        .increase_in_confidence  # class 1's probability rises from 0 to 0.75


def test_step_counts_round_halves_up_and_every_input_goes_through_forward_in_batches():
    assert metrics.step_counts(10, 4).tolist() == [0, 3, 5, 8, 10]  # 2.5 → 3, 7.5 → 8
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return sees_the_object(batch)

    metrics.faithfulness(counting, IMAGE, IMAGE, OBJECT * 1.0, 0, 1.0, steps=8, batch_size=7)
    assert sum(calls) == 2 * 8 + 2 and max(calls) == 7  # 2N + 2 forward passes, never more than a batch


def test_the_curves_ends_go_through_forward_once_for_every_map_of_an_image():
    # Deletion starts at the image and ends black, insertion starts blurred and ends at the image, whatever the map:
    # three passes for all the maps of an image, then 2N − 1 a map (N − 1 deleted, N − 1 inserted, the masked image).
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return sees_the_object(batch)

    black = np.zeros_like(IMAGE)
    maps = [(OBJECT * 1.0, 0, 1.0), (1.0 - OBJECT, 0, 1.0), (np.ones((4, 4)), 1, 0.0)]
    together = metrics.faithfulness_of_maps(counting, IMAGE, black, maps, steps=4, batch_size=5)
    assert sum(calls) == 3 + len(maps) * (2 * 4 - 1)
    assert together == [metrics.faithfulness(sees_the_object, IMAGE, black, m, c, p, 4, 32) for m, c, p in maps]
    # The image's own scores, where the caller has them, are the curves' ends: no pass of the image itself.
    calls.clear()
    given = metrics.faithfulness_of_maps(counting, IMAGE, black, maps[:1], 4, 5, unperturbed=np.array([0.9, 0.1]))
    assert sum(calls) == 2 + 2 * 4 - 1
    assert given[0].deletion_curve == [0.9, 0, 0, 0, 0] and given[0].insertion_curve == [0, 1, 1, 1, 0.9]


def test_auc_is_the_trapezoid_rule():
    assert metrics.auc([0.0, 1.0]) == 0.5
    assert metrics.auc([1.0, 0.5, 0.5, 0.0]) == pytest.approx((0.75 + 0.5 + 0.25) / 3)


def test_gaussian_blur_equals_a_direct_two_dimensional_convolution():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 15, 3)).astype(np.float64)
    sigma, radius = 1.5, 5  # the kernel reaches 3σ, rounded up
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    expected = np.zeros_like(image)
    for row in range(12):
        for col in range(15):
            window = padded[row : row + 2 * radius + 1, col : col + 2 * radius + 1]
            expected[row, col] = (window * kernel[..., None]).sum(axis=(0, 1))
    np.testing.assert_allclose(metrics.gaussian_blur(image, sigma), expected, rtol=1e-5, atol=1e-3)


def test_pointing_game_and_energy_by_hand():
    saliency = np.zeros((40, 60))
    saliency[10, 30] = 1.0  # the peak: pixel centre (30.5, 10.5)
    saliency[35, 5] = 0.5
    inside = [(20.0, 5.0, 40.0, 15.0)]
    assert metrics.pointing_hit(saliency, inside, tolerance=0)
    near = [(32.0, 12.0, 50.0, 30.0)]  # 1.5 right of and 1.5 below the peak: 2.12 away
    assert not metrics.pointing_hit(saliency, near, tolerance=2.0) and metrics.pointing_hit(saliency, near, 2.2)
    assert metrics.energy_in_boxes(saliency, inside) == pytest.approx(1.0 / 1.5)
    assert metrics.energy_in_boxes(saliency, inside + [(0.0, 30.0, 10.0, 40.0)]) == pytest.approx(1.0)
    assert metrics.energy_in_boxes(np.zeros((4, 4)), inside) is None
    edge = np.zeros((40, 60))
    edge[10, 40] = 1.0  # x1 is exclusive: column 40 lies outside a box that ends at 40
    assert metrics.energy_in_boxes(edge, inside) == 0.0


def test_spearman_on_ranks_with_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.spearman(a, a * 10) == pytest.approx(1.0) and metrics.spearman(a, -a) == pytest.approx(-1.0)
    tied = np.array([1.0, 1.0, 2.0, 3.0])  # ranks 0.5, 0.5, 2, 3 against 0, 1, 2, 3
    ra, rb = np.array([0.5, 0.5, 2, 3]) - 1.5, np.arange(4) - 1.5
    assert metrics.spearman(tied, a) == pytest.approx((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))
    assert metrics.spearman(np.ones(4), a) == 0.0


def test_bootstrap_interval_holds_the_mean_and_narrows_with_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    low, high = metrics.bootstrap_ci(small)
    assert low < small.mean() < high
    low2, high2 = metrics.bootstrap_ci(large)
    assert high2 - low2 < (high - low) / 5


def scenes_folder(root: Path, make, names, count: int, seed: int) -> tuple[Path, Path]:
    """`count` scenes the model never saw, and a boxes CSV around each one's object."""
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    rows = ["image,x0,y0,x1,y1,class"]
    for i in range(count):
        scene = make(rng)
        Image.fromarray(scene.image).save(folder / f"{i:02d}.png")
        top, left, bottom, right = scene.box
        rows.append(f"{i:02d}.png,{left},{top},{right},{bottom},{names[scene.label]}")
    boxes = root / "boxes.csv"
    boxes.write_text("\n".join(rows) + "\n")
    return folder, boxes


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> tuple[Path, Path]:
    return scenes_folder(tmp_path_factory.mktemp("evaluate"), make_shape, SHAPES, 24, 31)


@pytest.fixture(scope="module")
def marks_folder(tmp_path_factory) -> tuple[Path, Path]:
    return scenes_folder(tmp_path_factory.mktemp("marks"), make_mark, MARKS, 24, 31)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def summary_rows(stdout: str) -> dict[str, dict[str, float | None]]:
    """The TSV summary by method, best first: deletion, insertion, drop, increase, pointing, energy, images (None:
    not measured)."""
    rows = [line.split("\t") for line in stdout.splitlines()]
    columns = ["deletion", "insertion", "drop", "increase", "pointing", "energy", "images"]
    return {row[0]: {c: float(v) if v else None for c, v in zip(columns, row[1:])} for row in rows}


def test_gradcam_beats_the_random_control_on_faithfulness_and_localisation(marks_model, marks_folder, tmp_path):
    """On the marks model, which learned that what evaluate does to pixels off the object (black blocks, dimming) is no
    evidence, as these metrics assume of the models they measure. Margins, and what the deterministic fixture gives
    (three more training seeds, measured when this was written, are no closer): deletion 0.24 against 0.41, insertion
    0.93 / 0.43, Average Drop 0.01 / 0.61, pointing 1.00 / 0.54, energy 0.53 / 0.13."""
    folder, boxes = marks_folder
    labels = tmp_path / "marks.txt"
    labels.write_text("\n".join(MARKS) + "\n")
    out = tmp_path / "out"
    # fp32: bfloat16's rounding differs between CPUs (AMX, AVX512-BF16, emulated), one more source of a moved image.
    result = run("evaluate", folder, "--model", marks_model, "--labels", labels, "--methods", "gradcam,random",
                 "--boxes", boxes, "-o", out, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = summary_rows(result.stdout)
    assert list(rows) == ["gradcam", "random"]  # best first, by insertion − deletion
    gradcam, random = rows["gradcam"], rows["random"]
    assert gradcam["images"] == random["images"] == 24
    assert gradcam["deletion"] < random["deletion"] - 0.05
    assert gradcam["insertion"] > random["insertion"] + 0.2
    assert gradcam["drop"] < random["drop"] - 0.2
    assert gradcam["pointing"] > random["pointing"] + 0.2
    assert gradcam["energy"] > random["energy"] + 0.3

    records = output.read_manifest(out, evaluate.RECORDS)
    assert len(records) == 48 and (out / evaluate.SUMMARY_FIGURE).is_file()
    first = records[0]
    assert {"image", "method", "layer", "class_index", "label", "truth", "deletion_auc", "insertion_auc",
            "average_drop", "increase_in_confidence", "pointing_hit", "energy_in_box"} <= set(first)
    assert first["deletion_auc"] == pytest.approx(metrics.auc(first["deletion_curve"]))
    assert len(first["deletion_curve"]) == 33
    means = np.mean([r["insertion_auc"] for r in records if r["method"] == "gradcam"])
    assert gradcam["insertion"] == pytest.approx(means, abs=1e-4)  # stdout holds the means of the records


def test_gradcam_raises_confidence_more_often_than_random(shapes_model, shapes_labels, shapes_folder, tmp_path):
    """Increase in Confidence counts the images whose map-weighted input raises the class's probability: a model sure
    of every image (the marks model) leaves it nothing to raise, so it is measured on the shapes model, whose
    probabilities are not saturated. The deterministic fixture gives 7 against 5 images of 24 (and so did three other
    training seeds and AVX-512 kernels, measured when this was written)."""
    folder, boxes = shapes_folder
    out = tmp_path / "out"
    result = run("evaluate", folder, "--model", shapes_model("none"), "--labels", shapes_labels, "--methods",
                 "gradcam,random", "--steps", "2", "-o", out, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = summary_rows(result.stdout)
    assert rows["gradcam"]["increase"] > rows["random"]["increase"] + 0.05


def test_evaluate_json_intervals_and_resume(tiny_model, tiny_labels, photo_tree, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", photo_tree, "--model", tiny_model, "--labels", tiny_labels, "--methods", "gradcam,random",
            "--steps", "4", "-o", out, "--json"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "4 steps: 14 forward passes per image and class, plus the curves' ends once an image" in first.stderr
    summary = [json.loads(line) for line in first.stdout.splitlines()]
    assert {s["method"] for s in summary} == {"gradcam", "random"} and all(s["images"] == 3 for s in summary)
    for s in summary:
        low, high = s["deletion_auc"]["ci95"]
        assert low <= s["deletion_auc"]["mean"] <= high
        assert s["pointing_game"] is None  # no --boxes
    again = run(*args, "--skip-existing")
    assert again.exit_code == 0 and "3 skipped (already explained)" in again.stderr
    assert len(output.read_manifest(out, evaluate.RECORDS)) == 6  # nothing twice
    assert [json.loads(line) for line in again.stdout.splitlines()] == summary  # summed up from the records


def test_unknown_method_is_a_usage_error(photo_tree):
    result = run("evaluate", photo_tree, "--methods", "gradcam,nope")
    assert result.exit_code == 2 and "unknown method 'nope'" in result.stderr


def test_sanity_check_randomises_a_copy_and_random_maps_do_not_notice(shapes_model, shapes_labels, shapes_folder,
                                                                     tmp_path):
    folder, _ = shapes_folder
    path = shapes_model("none")
    out = tmp_path / "out"
    result = run("evaluate", folder, "--model", path, "--labels", shapes_labels, "--methods", "gradcam,random",
                 "--steps", "4", "--sanity", "--sanity-stages", "3", "--sanity-figures", "2", "-o", out)
    assert result.exit_code == 0, result.output
    records = output.read_manifest(out, evaluate.SANITY_RECORDS)
    assert len(records) == 24 * 2 * 3 and {r["layers_randomised"] for r in records} == {1, 4, 7}
    by = lambda method, stage: [r["spearman"] for r in records if r["method"] == method and r["stage"] == stage]  # noqa: E731
    assert all(value == pytest.approx(1.0) for stage in (1, 2, 3) for value in by("random", stage))
    assert np.mean(by("gradcam", 3)) < 0.5  # the model destroyed, Grad-CAM's maps are no longer the same
    assert "sanity: mean Spearman" in result.stderr
    figures = sorted(p.name for p in out.glob("*.sanity.png"))
    assert figures == ["00.sanity.png", "01.sanity.png"]
    assert sorted(output.files_of(records)) == figures  # every file written has its line
    from explain_cli.model import loading as models
    from explain_cli.model import randomise

    model = models.load(str(path))
    trained = [w.copy() for w in model.keras_model.get_weights()]
    cascade = randomise.cascade(model, 3, seed=0)
    cascade.assign(3)
    copied = cascade.model.keras_model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(model.keras_model.get_weights(), trained))  # untouched
    assert sum(not np.array_equal(a, b) for a, b in zip(copied, trained)) >= 7  # the copy's layers are random
    cascade.assign(0)
    assert all(np.array_equal(a, b) for a, b in zip(cascade.model.keras_model.get_weights(), trained))


@pytest.mark.parametrize("chosen", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    precision.bf16_support() == "unavailable", reason="ONEDNN_MAX_CPU_ISA denies oneDNN bfloat16 (test_precision.py)"))])
def test_every_stage_of_the_cascade_reaches_the_compiled_step(shapes_model, chosen):
    """The methods are compiled once on the copy and its weights assigned stage by stage afterwards: nothing in the
    compiled step may hold weights of its own (a BatchNorm folded at compile time, a bf16 layer copy), or the
    randomisation would never reach it. At every stage the step's logits are the copy's own."""
    from explain_cli.steps import compiled as explainer
    from explain_cli.model import loading as models
    from explain_cli.model import randomise
    from explain_cli.model import cut as split

    model = models.load(str(shapes_model("none")), precision=chosen)
    cascade = randomise.cascade(model, 3, seed=0)
    step = randomise.explainers_for(cascade, explainer.default_layer(cascade.graph, model), ["gradcam"],
                                    lambda m, g, cut, method: explainer.compile_explain(m, cut, method))["gradcam"]
    images = np.random.default_rng(0).integers(0, 256, (4, model.height, model.width, 3), dtype=np.uint8)
    for stage in range(len(cascade.stages) + 1):
        cascade.assign(stage)
        logits = cascade.model.keras_model.predict(images.astype("float32"), verbose=0)  # this model ends in logits
        result = step(images)  # its score is the explained class's logit (probabilities saturate: not those)
        expected = np.take_along_axis(logits, result.classes, axis=1)
        np.testing.assert_allclose(result.scores, expected, rtol=0.05 if chosen == "bf16" else 1e-4,
                                   atol=0.05 if chosen == "bf16" else 1e-4)
    assert step.traced.experimental_get_tracing_count() == 1
