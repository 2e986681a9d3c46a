"""`explain evaluate`: each method's maps measured against the model itself, image by image.

For each image, explained class and method, the map (normalised to [0, 1], upsampled bilinearly to the
model's input size) is scored by deletion and insertion AUC, Average Drop and Increase in Confidence
(evaluation/metrics.py), every perturbed input going through one compiled forward pass in batches; with boxes,
the pointing game and the energy in the boxes, at the original image's size. `random`, a seeded
uniform-noise map, is the control every method must beat.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from explain_cli.evaluation import metrics
from explain_cli.inputs import grids, held
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.inputs.sources import Source
from explain_cli.evaluation.metrics import Box
from explain_cli.methods.control import random_map
from explain_cli.methods.registry import LAYERLESS as LAYERLESS
from explain_cli.running.pipeline import ImageResult
from explain_cli.results import MethodSummary

RANDOM = "random"
RECORDS = output.EVALUATION
SANITY_RECORDS = "sanity.jsonl"
SUMMARY_FIGURE = "evaluation.png"
# The columns of the per-method summary, as printed: (record key, column name).
COLUMNS = (("deletion_auc", "deletion_auc"), ("insertion_auc", "insertion_auc"), ("average_drop", "average_drop"),
           ("increase_in_confidence", "increase_in_confidence"), ("pointing_hit", "pointing_game"),
           ("energy_in_box", "energy_pointing_game"))


@dataclass(frozen=True)
class Settings:
    methods: tuple[str, ...]
    steps: int = 32  # N: deletion and insertion take N + 1 points each
    blur_sigma: float = 5.0  # insertion's starting image, in input pixels
    tolerance: float = 15.0  # pointing game, in original pixels
    seed: int = 0  # the random control's noise
    batch_size: int = 32  # perturbed inputs per forward call


@dataclass(frozen=True)
class LabelledBox:
    box: Box
    class_index: int | None  # None: a box of any class


@dataclass
class EvaluationBatch:
    probabilities: np.ndarray  # (b, classes)
    classes: np.ndarray  # (b, k)
    maps: dict[str, np.ndarray]  # method -> (b, k, h, w) in [0, 1], at the method's own resolution
    faithfulness: dict[tuple[int, int, str], metrics.Faithfulness] = field(default_factory=dict)
    stage_maps: dict[str, np.ndarray] = field(default_factory=dict)  # --sanity: method -> (b, k, stages + 1, h, w)
    regions: np.ndarray | None = None  # a segmentation: (b, h, w, classes) where each class is predicted


@dataclass(frozen=True)
class Sanity:
    """--sanity: the randomisation cascade (randomise.Cascade) and the methods compiled on its copy."""

    cascade: Any
    explainers: Mapping[str, Callable[[np.ndarray, np.ndarray], Any]]
    figures: frozenset  # the sources that get a figure of their maps across the stages
    out_dir: Path | None  # where those figures go (None: none are made)


def evaluation_step(
    predict: Callable[[np.ndarray], np.ndarray],
    forward: metrics.Forward,
    explainers: Mapping[str, Callable[[np.ndarray, np.ndarray], Any]],
    choose: Callable[[np.ndarray, Sequence[Source]], np.ndarray],
    settings: Settings,
    sanity: Sanity | None = None,
    segmentation: tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
) -> Callable[[np.ndarray, list[Source]], EvaluationBatch]:
    """A pipeline compute step: maps of every method for the chosen classes, then their faithfulness.

    `predict` maps uint8 images to probabilities, `forward` float pixels to probabilities, each
    explainer (images, classes (b,)) to a result with maps (b, 1, h, w), and `choose` picks the (b, k)
    classes to explain from the probabilities. A segmentation's `segmentation` is (uint8 images -> where each class
    is predicted (b, h, w, classes); (float pixels, those regions of one image) -> each class's mean probability
    over its region): a class's score, perturbed, is its mean probability over the region of the unperturbed image.
    """

    def compute(images: np.ndarray, sources: list[Source]) -> EvaluationBatch:
        probabilities = predict(images)
        classes = choose(probabilities, sources)
        regions = segmentation[0](images) if segmentation is not None else None
        b, k = classes.shape
        maps: dict[str, np.ndarray] = {}
        for method in settings.methods:
            if method == RANDOM:
                maps[method] = random_maps(settings.seed, sources, classes, *images.shape[1:-1])
            else:
                maps[method] = _maps(explainers[method], images, classes)
        batch = EvaluationBatch(probabilities, classes, maps, regions=regions)
        if sanity is not None:
            batch.stage_maps = _cascade_maps(sanity, images, classes, maps)
        for i in range(b):
            image_forward, scored = forward, probabilities[i]
            if segmentation is not None and regions is not None:  # the regions of this image, unperturbed
                image_forward = functools.partial(segmentation[1], regions=regions[i])
                scored = image_forward(images[i:i + 1].astype(np.float32))[0]
            measure(batch, images, i, image_forward, scored, settings)
        return batch

    return compute


def measure(batch: EvaluationBatch, images: np.ndarray, i: int, forward: metrics.Forward, scored: np.ndarray,
            settings: Settings) -> None:
    """Image i's faithfulness for each of its explained classes and methods, into `batch`: its perturbed copies
    through `forward` (float pixels -> (n, classes) scores), `scored` (classes,) its own scores."""
    keys = [(i, j, method) for j in range(batch.classes.shape[1]) for method in settings.methods]
    requests = [(at_input(batch.maps[method][i, j], images.shape[1:-1]), int(batch.classes[i, j]),
                 float(scored[batch.classes[i, j]])) for i, j, method in keys]
    blurred = metrics.gaussian_blur(images[i], settings.blur_sigma)
    with held.row(i):  # a model of several inputs: the image's own values for the others
        scores = metrics.faithfulness_of_maps(forward, images[i], blurred, requests, settings.steps,
                                              settings.batch_size, unperturbed=scored)
    batch.faithfulness.update(zip(keys, scores))


def at_input(heatmap: np.ndarray, sides: Sequence[int]) -> np.ndarray:
    """A map at the model input's (height, width), bilinearly; a volume's or a clip's at its (depth, height, width)."""
    if len(sides) == 2:
        return render.upsample(heatmap, sides[1], sides[0])
    return grids.resample(heatmap, sides)


def random_maps(seed: int, sources: Sequence[Source], classes: np.ndarray, *sides: int) -> np.ndarray:
    """(b, k, *sides): the random control's seeded noise for each image and explained class."""
    return np.stack([np.stack([random_map(seed, s.shown, int(c), *sides) for c in row])
                     for s, row in zip(sources, classes)])


def _maps(explain: Callable[[np.ndarray, np.ndarray], Any], images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(b, k, h, w) maps in [0, 1]: one explain call per class column."""
    columns = [explain(images, classes[:, j].astype(np.int32)).maps[:, 0] for j in range(classes.shape[1])]
    return np.stack([np.stack([render.normalise(m) for m in column]) for column in columns], 1)


def _cascade_maps(sanity: Sanity, images: np.ndarray, classes: np.ndarray,
                  maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each method's maps at every stage of the cascade; stage 0 is the trained model's (`maps`)."""
    staged = {method: [trained] for method, trained in maps.items()}
    try:
        for stage in range(1, len(sanity.cascade.stages) + 1):
            sanity.cascade.assign(stage)
            for method in maps:
                explain = sanity.explainers.get(method)
                staged[method].append(maps[method] if explain is None else _maps(explain, images, classes))
    finally:
        sanity.cascade.assign(0)
    return {method: np.stack(stack, axis=2) for method, stack in staged.items()}


def finish_step(names: Sequence[str], model: str, layer: str | None, settings: Settings,
                truth: Mapping[Source, int] | None, boxes: Mapping[Source, list[LabelledBox]] | None,
                sanity: Sanity | None = None, canvas: Any = None) -> Callable:
    """A pipeline finish step: one record per (class, method), with localisation at the original size (a letterboxed
    map cut to the picture's part first, `canvas`); with --sanity, a record per (class, method, stage) of the rank
    correlation with the trained model's map."""
    from explain_cli.running.values import fitted

    def finish(source: Source, original: np.ndarray, row: int, batch: EvaluationBatch) -> ImageResult:
        sides = original.shape[:-1]  # a picture's (height, width), a volume's (depth, height, width)
        records = []
        known = truth.get(source) if truth is not None else None
        for j, class_index in enumerate(int(c) for c in batch.classes[row]):
            located = _boxes_for(boxes, source, class_index)
            region = _region(batch, row, class_index, sides,
                             lambda mask: fitted(mask, canvas, source, original, nearest=True))
            for method in settings.methods:
                scores = batch.faithfulness[row, j, method]
                hit = energy = None
                if located or region is not None:
                    full = at_input(fitted(batch.maps[method][row, j], canvas, source, original), sides)
                if located:
                    hit, energy = metrics.pointing_hit(full, located, settings.tolerance), metrics.energy_in_boxes(
                        full, located)
                elif region is not None:  # a segmentation: against where the class is predicted
                    hit = metrics.pointing_hit_mask(full, region, settings.tolerance)
                    energy = metrics.energy_in_mask(full, region)
                records.append({
                    "image": source.shown, "model": model, "method": method,
                    "layer": None if method in LAYERLESS else layer, "class_index": class_index,
                    "label": output.label_of(names, class_index),
                    "truth": known, "truth_label": None if known is None else output.label_of(names, known),
                    "deletion_auc": scores.deletion_auc, "insertion_auc": scores.insertion_auc,
                    "average_drop": scores.average_drop, "increase_in_confidence": scores.increase_in_confidence,
                    "pointing_hit": hit, "energy_in_box": energy, "steps": settings.steps,
                    "deletion_curve": scores.deletion_curve, "insertion_curve": scores.insertion_curve,
                })
        side = _sanity_records(source, original, row, batch, names, sanity, settings, canvas) if sanity else []
        return ImageResult(source, records=records, side_records=side)

    return finish


def _sanity_records(source: Source, original: np.ndarray, row: int, batch: EvaluationBatch, names: Sequence[str],
                    sanity: Sanity, settings: Settings, canvas: Any = None) -> list[dict]:
    """A record per (class, method, stage): the rank correlation of its map with the trained model's, on the picture's
    part of a letterbox; and the figure of the first class's maps across the stages, for the sources that get one."""
    from explain_cli.running.values import fitted

    def cut(maps: np.ndarray) -> list[np.ndarray]:
        return [fitted(m, canvas, source, original) for m in maps]

    records = []
    for j, class_index in enumerate(int(c) for c in batch.classes[row]):
        for method in settings.methods:
            stages = cut(batch.stage_maps[method][row, j])
            for stage, (count, deepest) in enumerate(sanity.cascade.stages, start=1):
                records.append({
                    "image": source.shown, "method": method, "class_index": class_index,
                    "label": output.label_of(names, class_index), "stage": stage,
                    "layers_randomised": count, "deepest_randomised": deepest,
                    "spearman": metrics.spearman(stages[0], stages[stage]),
                })
    if source in sanity.figures and records and sanity.out_dir is not None and original.ndim == 3:  # not a volume
        rows = {method: cut(batch.stage_maps[method][row, 0]) for method in settings.methods}
        records[0]["figure"] = sanity_figure(sanity.out_dir, source, original, rows, sanity.cascade.stages)
    return records


def sanity_figure(out_dir: Path, source: Source, original: np.ndarray, rows: Mapping[str, list[np.ndarray]],
                  stages: Sequence[tuple[int, str]]) -> str:
    """<stem>.sanity.png: each method's maps (a row) across the cascade's stages, written; its name."""
    name = source.stem.with_name(f"{source.stem.name}.sanity.png").as_posix()
    titles = ["trained"] + [f"top {count} random" for count, _ in stages]
    output.FileSet(out_dir).write(name, render.stage_figure(original, dict(rows), titles))
    return name


def _region(batch: EvaluationBatch, row: int, class_index: int, sides: tuple[int, ...],
            cut: Callable[[np.ndarray], np.ndarray] = lambda mask: mask) -> np.ndarray | None:
    """A segmentation's region of a class at the original's (height, width) or a volume's (depth, height, width)
    (nearest), where the unperturbed image has it; `cut` takes a letterbox's padding away first."""
    if batch.regions is None:
        return None
    from PIL import Image

    mask = cut((batch.regions[row, ..., class_index] > 0).astype(np.int32)).astype(np.uint8)
    if mask.ndim == 3:  # a volume's voxels
        return grids.nearest(mask, sides) > 0
    return np.asarray(Image.fromarray(mask).resize((sides[1], sides[0]), Image.Resampling.NEAREST)) > 0


def given_boxes(boxes: Mapping[Any, Sequence[Sequence[Any]]], labels: Any,
                key: Callable[[Any], Any]) -> dict[Any, list[LabelledBox]]:
    """Boxes given in memory, per image: (x0, y0, x1, y1[, class]), the class a number, label or WordNet id."""
    from explain_cli.steps import targets

    located: dict[Any, list[LabelledBox]] = {}
    for image, rows in boxes.items():
        for row in rows:
            corners = tuple(float(v) for v in row[:4])
            label = targets.resolve_class(labels, row[4]) if len(row) > 4 else None
            located.setdefault(key(image), []).append(LabelledBox(corners, label))  # type: ignore[arg-type]
    return located


def _boxes_for(boxes: Mapping[Any, list[LabelledBox]] | None, source: Source, class_index: int) -> list[Box]:
    """The boxes of an image for a class: keyed by the image's key, or for a file by its name as a CSV gives it."""
    if not boxes:
        return []
    from explain_cli.inputs.truth import normal_name

    found = boxes.get(source.key)
    if found is None and source.index is None:
        found = boxes.get(normal_name(source.shown)) or boxes.get(normal_name(source.relative))
    return [b.box for b in found or [] if b.class_index is None or b.class_index == class_index]


def summarise(records: Sequence[dict], methods: Sequence[str], seed: int = 0) -> list[MethodSummary]:
    """Per method: the mean of each metric over its records (and a 95 % bootstrap interval), best first."""
    summaries = []
    for method in methods:
        mine = [r for r in records if r.get("method") == method]
        means: dict[str, float | None] = {}
        intervals: dict[str, tuple[float, float] | None] = {}
        for key, column in COLUMNS:
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            means[column] = float(np.mean(values)) if values else None
            intervals[column] = metrics.bootstrap_ci(values, seed=seed) if values else None
        summaries.append(MethodSummary(method, len({r["image"] for r in mine}), means, intervals))
    return sorted(summaries, key=lambda s: -s.faithfulness_gap)


def mean_curves(records: Sequence[dict], methods: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method: the mean deletion and insertion curves of its records (all with the same step count)."""
    curves = {}
    for method in methods:
        mine = [r for r in records if r.get("method") == method and r.get("deletion_curve")]
        lengths = {len(r["deletion_curve"]) for r in mine}
        if len(lengths) == 1:
            curves[method] = (np.mean([r["deletion_curve"] for r in mine], axis=0),
                              np.mean([r["insertion_curve"] for r in mine], axis=0))
    return curves


def read_boxes(path: Path, sources: Sequence[Source] | None, labels: Any) -> dict[Any, list[LabelledBox]]:
    """--boxes FILE.csv: image,x0,y0,x1,y1 and an optional class column, in the original image's pixels; keyed by
    each source's key, or without sources by the image's name as the file gives it."""
    from explain_cli.inputs import truth as truth_module

    try:
        return _read_boxes(path, sources, labels)
    except truth_module.TruthError as error:
        raise truth_module.TruthError(str(error), "--boxes") from None


def _read_boxes(path: Path, sources: Sequence[Source] | None, labels: Any) -> dict[Any, list[LabelledBox]]:
    from explain_cli.inputs import truth as truth_module

    required = ("image", "x0", "y0", "x1", "y1")
    if sources is None:
        by_name: dict[Any, list] = {}
        for number, row in truth_module.read_csv(path, required):
            by_name.setdefault(truth_module.normal_name(row["image"]), []).append((number, row))
        grouped = by_name.items()
    else:
        grouped = ((source.key, rows) for source, rows in truth_module.rows_by_source(path, required, sources).items())
    found: dict[Any, list[LabelledBox]] = {}
    for key, rows in grouped:
        for number, row in rows:
            try:
                box = tuple(float(row[name]) for name in ("x0", "y0", "x1", "y1"))
            except ValueError:
                raise truth_module.TruthError(f"{path}, line {number}: x0, y0, x1, y1 must be numbers") from None
            cls = row.get("class") or None
            class_index = truth_module.resolve(labels, cls, path, number) if cls else None
            found.setdefault(key, []).append(LabelledBox(box, class_index))  # type: ignore[arg-type]
    return found


def format_summary(summaries: Sequence[MethodSummary], style: str) -> str:
    """The per-method means for stdout: TSV lines, JSON lines with 95 % intervals, or a table."""
    if style == "json":
        import json

        lines = []
        for s in summaries:
            row: dict[str, Any] = {"method": s.method, "images": s.images}
            for _, column in COLUMNS:
                interval = s.intervals[column]
                row[column] = None if s.means[column] is None else {"mean": s.means[column], "ci95": list(interval)}
            lines.append(json.dumps(row) + "\n")
        return "".join(lines)
    cells = [[s.method] + ["" if s.means[c] is None else f"{s.means[c]:.4f}" for _, c in COLUMNS] + [str(s.images)]
             for s in summaries]
    if style == "tsv":
        return "".join("\t".join(row) + "\n" for row in cells)
    header = ["method"] + [c for _, c in COLUMNS] + ["images"]
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]
    return "".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
                   + "\n" for r in [header] + cells)
