"""An object detector's detections as a batch finds them (in the model input's pixels, with their maps), and as the
values the library hands out (in each image's own pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from explain_cli.inputs.sources import Canvas, Source
from explain_cli.results import Detection, Explanation, frozen_array
from explain_cli.running.values import fitted


@dataclass(frozen=True)
class Found:
    """One image's detections as the batch computed them: in the input's pixels, with the explained maps."""

    prediction: np.ndarray  # (k,) which pre-NMS prediction each is
    classes: np.ndarray  # (k,)
    scores: np.ndarray  # (k,)
    boxes: np.ndarray  # (k, 4) xyxy, input pixels
    probabilities: np.ndarray  # (k, C)
    targets: np.ndarray | None = None  # (k,) the explained score (gradient methods: Σ IoU × class score)
    maps: np.ndarray | None = None  # (k, h, w)


@dataclass(frozen=True)
class DetectBatch:
    images: list[Found]


def with_maps(found: Found, targets: np.ndarray, maps: np.ndarray) -> Found:
    return Found(found.prediction, found.classes, found.scores, found.boxes, found.probabilities, targets, maps)


def detections(found: Found, names: Sequence[str], image_size: tuple[int, int], canvas: Canvas) -> list[Detection]:
    """An image's detections as values, their boxes in its own pixels (`canvas`: how it was fitted to the input)."""
    from explain_cli.io.files import label_of

    placed = canvas.to_image(found.boxes, image_size)
    return [Detection(k, int(c), label_of(names, int(c)), float(s), tuple(float(v) for v in box),  # type: ignore[arg-type]
                      frozen_array(p)) for k, (c, s, box, p) in
            enumerate(zip(found.classes, found.scores, placed, found.probabilities), 1)]


def explanations(made: Any, source: Source, original: np.ndarray, found: Found,
                 method: str | None = None) -> list[Explanation]:
    """An image's explained detections as values: each one's map, box (the image's pixels) and target."""
    image = frozen_array(original)
    method = method or made.method
    assert found.maps is not None and found.targets is not None
    return [Explanation(source=source.key, class_index=d.class_index, label=d.label, rank=d.rank,
                        probability=d.score, target_score=float(target), layer=made.layer_for(method), method=method,
                        map=frozen_array(fitted(np.asarray(raw, np.float32), made.canvas, source, original)),
                        image=image, box=d.box, target_kind="box")
            for d, target, raw in zip(detections(found, made.labels, original.shape[:2], made.canvas), found.targets,
                                      found.maps)]

