"""`explain evaluate` on an object detector: each detection's maps measured against the model, method by method.

A detection's score, perturbed, is its matched score: the highest probability of its class among the predictions of
the perturbed image whose box overlaps the detection's (found on the unperturbed image, then held fixed) by IoU ≥ 0.5.
Deletion and insertion AUC, Average Drop and Increase in Confidence follow it (evaluation/metrics.py, as for a class); the
pointing game and the energy are taken against the detection's own box. Every perturbed image goes through the one
compiled forward step, in full batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.evaluation.evaluate import Settings
from explain_cli.inputs.sources import Source
from explain_cli.running.values import fitted
from explain_cli.running.pipeline import ImageResult


@dataclass
class DetectionEvaluation:
    found: list[Any]  # per image: detect.Found (its detections)
    maps: dict[str, list[np.ndarray]]  # method -> per image (k, h, w)
    faithfulness: dict[tuple[int, int, str], metrics.Faithfulness]
    stage_maps: dict[str, list[np.ndarray]] | None = None  # --sanity: method -> per image (k, stages + 1, h, w)


def evaluation_step(made: Any, settings: Settings, sanity: Any = None) -> Callable[[np.ndarray, list[Source]],
                                                                                  DetectionEvaluation]:
    """A pipeline compute step: every detection of a batch, each method's map of it, and its faithfulness; with
    `sanity` (detect_sanity.DetectorSanity), its maps at every stage of the randomisation cascade."""

    def compute(images: np.ndarray, sources: list[Source]) -> DetectionEvaluation:
        looked = made.look(images)
        found = [made.suppress(looked.boxes[i], looked.probabilities[i]) for i in range(len(images))]
        maps = {method: [f.maps for f in made.maps(method, images, sources, looked, found)]
                for method in settings.methods}
        staged = None
        if sanity is not None:
            from explain_cli.evaluation import detection_sanity as detect_sanity

            staged = detect_sanity.stage_maps(sanity, settings.methods, images, sources, looked, found, maps)
        height, width = images.shape[1:3]
        scores: dict[tuple[int, int, str], metrics.Faithfulness] = {}
        for i, f in enumerate(found):
            if not len(f.classes):
                continue

            def matched(pixels: np.ndarray, f: Any = f) -> np.ndarray:  # (n, k): each detection's matched score
                return made.judge(pixels, f.boxes, f.probabilities, f.classes)[1]

            unperturbed = matched(images[i:i + 1].astype(np.float32))[0]
            keys = [(i, j, method) for j in range(len(f.classes)) for method in settings.methods]
            requests = [(render.upsample(render.normalise(maps[method][i][j]), width, height), j, float(unperturbed[j]))
                        for _, j, method in keys]
            blurred = metrics.gaussian_blur(images[i], settings.blur_sigma)
            scores.update(zip(keys, metrics.faithfulness_of_maps(matched, images[i], blurred, requests, settings.steps,
                                                                 settings.batch_size, unperturbed)))
        return DetectionEvaluation(found, maps, scores, staged)

    return compute


def finish_step(made: Any, settings: Settings, sanity: Any = None) -> Callable[[Source, np.ndarray, int, Any],
                                                                             ImageResult]:
    """A pipeline finish step: a record per (detection, method), localised against the detection's own box at the
    original image's size; with `sanity`, a side record per (detection, method, stage)."""

    def finish(source: Source, original: np.ndarray, row: int, batch: DetectionEvaluation) -> ImageResult:
        height, width = original.shape[:2]
        found = batch.found[row]
        placed = made.canvas.to_image(found.boxes, (height, width))
        records = []
        for j, (class_index, score, box) in enumerate(zip(found.classes, found.scores, placed)):
            corners = tuple(float(v) for v in box)
            for method in settings.methods:
                scores = batch.faithfulness[row, j, method]
                cut = fitted(batch.maps[method][row][j], made.canvas, source, original)
                full = render.upsample(render.normalise(cut), width, height)
                records.append({
                    "image": source.shown, "model": made.name, "method": method,
                    "layer": made.layer_for(method), "head": "detections",
                    "detection": j + 1, "class_index": int(class_index),
                    "label": output.label_of(made.labels, int(class_index)), "score": float(score),
                    "box": [round(v, 2) for v in corners],
                    "deletion_auc": scores.deletion_auc, "insertion_auc": scores.insertion_auc,
                    "average_drop": scores.average_drop, "increase_in_confidence": scores.increase_in_confidence,
                    "pointing_hit": metrics.pointing_hit(full, [corners], settings.tolerance),
                    "energy_in_box": metrics.energy_in_boxes(full, [corners]), "steps": settings.steps,
                    "deletion_curve": scores.deletion_curve, "insertion_curve": scores.insertion_curve,
                })
        side = []
        if sanity is not None and batch.stage_maps is not None:
            from explain_cli.evaluation import detection_sanity as detect_sanity

            staged = {method: maps[row] for method, maps in batch.stage_maps.items()}
            side = detect_sanity.records(source, original, found, staged, made.labels, sanity, made.canvas)
        return ImageResult(source, records=records, side_records=side)

    return finish


def check(methods: Sequence[str]) -> None:
    """The methods evaluate can measure on a detector; BadArgument naming the others."""
    from explain_cli.errors import BadArgument
    from explain_cli.methods import DETECTION_METHODS

    unknown = [m for m in methods if m not in DETECTION_METHODS]
    if unknown:
        raise BadArgument("--methods", f"{unknown[0]} does not explain detections; choose from "
                          f"{', '.join(DETECTION_METHODS)}")
