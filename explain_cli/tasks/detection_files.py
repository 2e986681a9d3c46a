"""Object detectors as model files (ONNX, LiteRT, SavedModel): the layouts their raw outputs come in, read in numpy.

A file has no layers to cut, so its detections are explained by forward passes alone (D-RISE, and the random control).
Its outputs, before non-maximum suppression, come in one of these layouts, read from their shapes where that is
unambiguous and otherwise named (`output_layout`):

| layout | outputs | boxes | scores |
| --- | --- | --- | --- |
| yolov8 | one, (B, 4 + C, A) (or (B, A, 4 + C)) | cx, cy, w, h in input pixels | C probabilities, no objectness |
| yolov5 | one, (B, A, 5 + C) (or (B, 5 + C, A)) | cx, cy, w, h in input pixels | objectness, then C probabilities |
| detr | boxes (B, Q, 4) and scores (B, Q, C) or (B, Q, C + 1) | cx, cy, w, h in fractions of the input | logits: a softmax with a last no-object class, or C sigmoids |
| boxes-scores | boxes (B, A, 4) and scores (B, A, C) | `box_format` (default x0, y0, x1, y1 in input pixels) | probabilities, or logits (sigmoid) |

Suppression is as for a Keras detector (per class, at `iou`), except for DETR-style queries, which are one prediction
per object already: none (IoU 1.0) unless `iou` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.errors import BadArgument
from explain_cli.tasks import boxes as box_module

LAYOUTS = ("yolov8", "yolov5", "detr", "boxes-scores")
ASK = "name the layout with --output-layout (" + ", ".join(LAYOUTS) + ")"


@dataclass(frozen=True)
class Layout:
    """How a detector file's outputs read: its layout, classes C, predictions A, where the boxes and scores are."""

    name: str
    classes: int
    predictions: int
    box_format: str  # boxes.FORMATS
    scores: str  # "probabilities", "logits" (a sigmoid each) or "softmax" (DETR's, with a no-object class last)
    outputs: tuple[int, ...]  # which outputs: (the one) or (boxes, scores)
    transposed: bool = False  # a one-output layout with its predictions on the last axis: (B, K, A)


@dataclass(frozen=True)
class FileDetector:
    """A detector file opened: its size and labels as a LoadedModel gives them, and `outputs` (pixels -> raw outputs,
    preprocessed) and `unscaled` (the model's input as it stands -> raw outputs)."""

    name: str
    height: int
    width: int
    channels: int
    labels: Any
    outputs: Callable[[np.ndarray], list[np.ndarray]]
    unscaled: Callable[[np.ndarray], list[np.ndarray]]
    notes: tuple[str, ...] = ()
    precision: str = "fp32"
    keras_model: Any = None

    def as_input(self) -> FileDetector:
        """The file fed its input as it stands (an array a user already scaled): no preprocessing."""
        return replace(self, outputs=self.unscaled)


def read(path: str, shapes: Sequence[tuple[str, tuple[Any, ...]]], probe: list[np.ndarray], given: str | None,
         box_format: str | None, labels: int | None) -> tuple[Layout, str]:
    """The layout of a detector file's outputs (their names and shapes, and their values on a grey image), and a note
    of how it was read; BadArgument (--output-layout) where it cannot be read."""
    if given is not None and given not in LAYOUTS:
        raise BadArgument("--output-layout", f"output_layout is one of {', '.join(LAYOUTS)}, not {given!r}")
    described = ", ".join(f"{name} {_shown(shape)}" for name, shape in shapes)
    triples = [i for i, (_, shape) in enumerate(shapes) if len(shape) == 3]
    if given in ("yolov8", "yolov5") or (given is None and len(shapes) == 1 and triples):
        if len(triples) != 1:
            raise BadArgument("--output-layout", f"{path}: its outputs are {described}; a YOLO's is one (B, 4 + C, A) "
                              f"or (B, A, 5 + C)")
        index = triples[0]
        _, middle, last = probe[index].shape
        transposed = middle < last  # (B, K, A): the predictions, thousands, outnumber the K values of each
        name = given or ("yolov8" if transposed else "yolov5")
        width = middle if transposed else last
        extra = 4 if name == "yolov8" else 5
        if width <= extra:
            raise BadArgument("--output-layout", f"{path}: its output {described} has no class scores after a "
                              f"{name} box; {ASK}")
        how = "named" if given else ("read from its shape" if transposed else
                                     "read from its shape: predictions last, so with objectness; --output-layout "
                                     "yolov8 if it has none")
        layout = Layout(name, width - extra, last if transposed else middle, "center_xywh", "probabilities",
                        (index,), transposed)
        return layout, f"outputs read as {name} ({how}): {layout.predictions} predictions of {layout.classes} classes"
    pairs = [(b, s) for b in triples for s in triples if b != s and probe[b].shape[:2] == probe[s].shape[:2]
             and probe[b].shape[2] == 4 and probe[s].shape[2] != 4]
    if not pairs and len(triples) == 2 and all(probe[i].shape[2] == 4 for i in triples):
        pairs = [(triples[0], triples[1])]  # four classes (or three and "no object"): the boxes come first
    if len(pairs) != 1 or given == "yolov8":
        raise BadArgument("--output-layout", f"{path}: its outputs are {described}, not a detector's explain reads "
                          f"as they are; {ASK}")
    b, s = pairs[0]
    normalised = bool(np.all((probe[b] >= -0.01) & (probe[b] <= 1.01)))
    name = given or ("detr" if normalised and box_format is None else "boxes-scores")
    k = probe[s].shape[2]
    if name == "detr":
        softmax = labels != k  # DETR's own: C classes and "no object"; RT-DETR's: C sigmoids, given C labels
        scores, classes = ("softmax", k - 1) if softmax else ("logits", k)
        fmt = box_format or "rel_center_xywh"
    else:
        bounded = bool(np.all((probe[s] >= 0) & (probe[s] <= 1)))
        scores, classes, fmt = ("probabilities" if bounded else "logits"), k, box_format or "xyxy"
    layout = Layout(name, classes, probe[b].shape[1], fmt, scores, (b, s))
    kind = {"softmax": "a softmax with no-object last", "logits": "logits", "probabilities": "probabilities"}[scores]
    return layout, (f"outputs read as {name} ({'named' if given else 'read from their shapes and values'}): boxes "
                    f"{shapes[b][0]} as {fmt}, scores {shapes[s][0]} as {kind}, {layout.predictions} predictions of "
                    f"{classes} classes")


def decode(layout: Layout, raw: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The outputs -> (n, A, 4) xyxy boxes in the input's pixels and (n, A, C) class probabilities."""
    if len(layout.outputs) == 1:
        values = raw[layout.outputs[0]]
        values = values.transpose(0, 2, 1) if layout.transposed else values
        boxes, scores = values[..., :4], values[..., 4:]
        if layout.name == "yolov5":
            scores = scores[..., 1:] * scores[..., :1]
    else:
        boxes, scores = raw[layout.outputs[0]], raw[layout.outputs[1]]
        if layout.scores == "softmax":
            shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores = (shifted / shifted.sum(axis=-1, keepdims=True))[..., :-1]
        elif layout.scores == "logits":
            scores = 1.0 / (1.0 + np.exp(-scores))
    xyxy = box_module.to_xyxy(np.asarray(boxes, np.float32), layout.box_format, height, width)
    return np.asarray(xyxy, np.float32), np.asarray(scores, np.float32)


def pairwise_iou(targets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(T, 4) and (n, A, 4) xyxy -> (n, T, A) IoU (boxes.iou over every image's predictions at once)."""
    n, predictions = candidates.shape[:2]
    overlaps = box_module.iou(targets, candidates.reshape(-1, 4)).reshape(len(targets), n, predictions)
    return overlaps.transpose(1, 0, 2).astype(np.float32)


def similarity(found_boxes: np.ndarray, found_probabilities: np.ndarray, targets: np.ndarray,
               target_probabilities: np.ndarray) -> np.ndarray:
    """D-RISE's score of each target in each masked image (n, T), as for a Keras detector (detection_outputs.similarity):
    max_a IoU(target, box_a) · cos(p_target, p_a) · max_c p_a,c."""
    def unit(p: np.ndarray) -> np.ndarray:
        return p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)

    cosine = np.einsum("nac,tc->nta", unit(found_probabilities), unit(target_probabilities))
    confidence = found_probabilities.max(axis=-1)[:, None, :]
    return np.asarray((pairwise_iou(targets, found_boxes) * cosine * confidence).max(axis=-1), np.float32)


def matched_score(found_boxes: np.ndarray, found_probabilities: np.ndarray, targets: np.ndarray,
                  classes: np.ndarray) -> np.ndarray:
    """evaluate's score of each target in each perturbed image (n, T): its class's best probability among the
    predictions overlapping it by IoU ≥ 0.5 (0 where none does)."""
    per_class = found_probabilities.transpose(0, 2, 1)[:, classes, :]  # (n, T, A)
    return np.asarray(np.where(pairwise_iou(targets, found_boxes) >= 0.5, per_class, 0.0).max(axis=-1), np.float32)


def steps(model: FileDetector, layout: Layout) -> Any:
    """The detector's steps (detection_steps.Steps) over the file's forward passes: look at a batch, judge masked
    images against detections."""
    from explain_cli.tasks.detection_steps import Looked, Steps

    def look(batch: np.ndarray) -> Looked:
        found_boxes, found_probabilities = decode(layout, model.outputs(batch), model.height, model.width)
        return Looked(found_boxes, found_probabilities)

    def judge(images: np.ndarray, targets: np.ndarray, probabilities: np.ndarray,
              classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found_boxes, found_probabilities = decode(layout, model.outputs(images), model.height, model.width)
        return (similarity(found_boxes, found_probabilities, targets, probabilities),
                matched_score(found_boxes, found_probabilities, targets, classes.astype(np.int64)))

    return Steps(look, judge, classes=layout.classes)


def _shown(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + ")"
