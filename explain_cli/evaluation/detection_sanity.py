"""--sanity on an object detector: cascading randomisation (model/randomise.py) of a copy of the detector, from its outputs
down, every detection explained again at each stage. What a detection is stays the trained model's: its box, its class
and the predictions its target sums over (with their IoU weights) are held, and D-RISE scores the copy's masked images
against the same boxes; only the features and the head that score them are the copy's. A method whose maps of a box
stay the same as the detector is destroyed is not explaining the detector.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.evaluation.evaluate import sanity_figure
from explain_cli.inputs.sources import Source


@dataclass(frozen=True)
class DetectorSanity:
    cascade: Any  # randomise.Cascade
    copy: Any  # a Detector on the cascade's copy, in TensorFlow and unfolded: the weights assigned are the ones used
    figures: frozenset  # the sources that get a figure of their first detection's maps across the stages
    out_dir: Path | None


def prepare(made: Any, model: Any, cut: bool, copy_on: Callable[[Any, str | None], Any], stages: int, seed: int,
            figures: frozenset, out_dir: Path | None, say: Callable[[str], None]) -> DetectorSanity:
    """The cascade of a copy of the detector `made` explains (`model`, a LoadedModel), and `copy_on(keras_model,
    layer)`: a Detector like `made` on the copy, at its layer where `made` has one `cut` (D-RISE alone needs none)."""
    from explain_cli.model import randomise

    cascade = randomise.cascade(model, stages, seed, same_class=True)
    layer = cascade.names.get(made.layer, made.layer) if cut and made.layer else None
    copy = copy_on(cascade.model.keras_model, layer)
    say(f"{made.name}: --sanity randomises a copy in {len(cascade.stages)} stages, down to {cascade.stages[-1][0]} "
        "weighted layers; each detection is held from the trained model")
    return DetectorSanity(cascade, copy, figures, out_dir)


def stage_maps(sanity: DetectorSanity, methods: Sequence[str], images: np.ndarray, sources: list[Source],
               looked: Any, found: list[Any], trained: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Per method, per image, its detections' maps at every stage, (k, stages + 1, h, w) in [0, 1]; stage 0 is the
    trained model's (`trained`), and the random control's maps are its own at every stage."""
    staged: dict[str, list[list[np.ndarray]]] = {m: [[_normalised(maps)] for maps in trained[m]] for m in methods}
    layered = any(sanity.copy.layer_for(m) for m in methods if m not in ("drise", "random"))
    try:
        for stage in range(1, len(sanity.cascade.stages) + 1):
            sanity.cascade.assign(stage)
            features = sanity.copy.look(images).features if layered else None
            held = replace(looked, features=features)  # the trained boxes and scores, the copy's features
            for method in methods:
                again = trained[method] if method == "random" else \
                    [f.maps for f in sanity.copy.maps(method, images, sources, held, found)]
                for i, maps in enumerate(again):
                    staged[method][i].append(_normalised(maps))
    finally:
        sanity.cascade.assign(0)
    return {m: [np.stack(stack, axis=1) for stack in per_image] for m, per_image in staged.items()}


def _normalised(maps: np.ndarray) -> np.ndarray:
    return np.stack([render.normalise(m) for m in maps]) if len(maps) else np.asarray(maps, np.float32)


def records(source: Source, original: np.ndarray, found: Any, staged: dict[str, np.ndarray], labels: Sequence[str],
            sanity: DetectorSanity, canvas: Any = None) -> list[dict]:
    """A record per (detection, method, stage): the rank correlation of its map with the trained model's, on the
    picture's part of a letterbox (`canvas`); and the figure of the first detection's maps across the stages, for the
    sources that get one."""
    from explain_cli.running.values import fitted

    staged = {method: np.stack([np.stack([fitted(m, canvas, source, original) for m in stages]) for stages in maps])
              if len(maps) else maps for method, maps in staged.items()}
    rows = []
    for j, class_index in enumerate(int(c) for c in found.classes):
        for method, maps in staged.items():
            for stage, (count, deepest) in enumerate(sanity.cascade.stages, start=1):
                rows.append({"image": source.shown, "detection": j + 1, "method": method, "class_index": class_index,
                             "label": output.label_of(labels, class_index), "stage": stage,
                             "layers_randomised": count, "deepest_randomised": deepest,
                             "spearman": metrics.spearman(maps[j, 0], maps[j, stage])})
    if source in sanity.figures and rows and sanity.out_dir is not None:
        shown = {method: list(maps[0]) for method, maps in staged.items()}
        rows[0]["figure"] = sanity_figure(sanity.out_dir, source, original, shown, sanity.cascade.stages)
    return rows
