"""Boxes, in numpy: their formats, overlap (IoU), non-maximum suppression, and precision against true boxes.

explain works in (x0, y0, x1, y1) pixels of the model's input ("xyxy"); a detector's own boxes are read from any of
FORMATS. Converting needs only array indexing and `stack`, so the same function serves numpy and TensorFlow tensors
(`xp`, the array module: numpy, or tf.experimental.numpy). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# What a detector's boxes may be: corners or centres in the input's pixels, or with `rel_`, in fractions of its size.
FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw", "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh",
           "rel_center_yxhw")


def to_xyxy(boxes: Any, box_format: str, height: int, width: int, xp: Any = np) -> Any:
    """(..., 4) boxes in `box_format` -> (..., 4) x0, y0, x1, y1 in pixels of an input of height × width."""
    relative = box_format.startswith("rel_")
    kind = box_format[4:] if relative else box_format
    a, b, c, d = (boxes[..., i] for i in range(4))
    if kind == "xyxy":
        x0, y0, x1, y1 = a, b, c, d
    elif kind == "yxyx":
        x0, y0, x1, y1 = b, a, d, c
    elif kind == "xywh":
        x0, y0, x1, y1 = a, b, a + c, b + d
    elif kind == "center_xywh":
        x0, y0, x1, y1 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    elif kind == "center_yxhw":
        x0, y0, x1, y1 = b - d / 2, a - c / 2, b + d / 2, a + c / 2
    else:
        raise ValueError(f"unknown box format {box_format!r}")
    if relative:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    return xp.stack([x0, y0, x1, y1], axis=-1)


def area(boxes: np.ndarray) -> np.ndarray:
    """(...,) the area of xyxy boxes; 0 for an empty or inverted box."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m): intersection over union of each xyxy box of `a` (n, 4) with each of `b` (m, 4); 0 where both are
    empty."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    inner = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None) * \
        np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    union = area(a) + area(b) - inner
    return np.where(union > 0, inner / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, min_score: float,
        max_boxes: int, per_class: bool = True) -> np.ndarray:
    """The indexes kept by greedy non-maximum suppression, best first: boxes scoring at least `min_score`, each
    dropped where it overlaps a better one kept (of its own class with `per_class`, of any class without) by more than
    `iou_threshold`; at most `max_boxes`."""
    order = np.flatnonzero(scores >= min_score)
    order = order[np.argsort(-scores[order], kind="stable")]
    kept: list[int] = []
    while len(order) and len(kept) < max_boxes:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap = iou(boxes[best][None], boxes[rest])[0]
        clash = overlap > iou_threshold
        if per_class:
            clash &= classes[rest] == classes[best]
        order = rest[~clash]
    return np.array(kept, np.int64)


def match_weights(candidates: np.ndarray, box: np.ndarray, least: float = 0.5) -> np.ndarray:
    """(n,): each candidate box's IoU with `box` where it is at least `least`, else 0 (a detection's gradient target
    weighs the pre-NMS predictions that make it up by these)."""
    overlap = iou(box[None], candidates)[0]
    return np.where(overlap >= least, overlap, 0.0).astype(np.float32)


@dataclass(frozen=True)
class Found:
    """A detection, to be matched with the truth: its image, class, score and xyxy box (the image's pixels)."""

    image: Any
    class_index: int
    score: float
    box: tuple[float, float, float, float]


def precision_recall(found: Sequence[Found], truth: dict[Any, list[tuple[int, tuple[float, ...]]]],
                     least: float = 0.5) -> dict[str, Any]:
    """Detections against true boxes at IoU ≥ `least`: each detection, best first per class, takes the unmatched true
    box of its class it overlaps most. Returns precision, recall and mAP (the mean over classes with true boxes of the
    area under the interpolated precision-recall curve, as PASCAL VOC from 2010), and each class's AP."""
    classes = sorted({c for boxes in truth.values() for c, _ in boxes})
    hits = 0
    precisions: dict[int, float] = {}
    for cls in classes:
        ranked = sorted((f for f in found if f.class_index == cls and f.image in truth), key=lambda f: -f.score)
        unmatched = {image: [box for c, box in boxes if c == cls] for image, boxes in truth.items()}
        total = sum(len(v) for v in unmatched.values())
        correct = np.zeros(len(ranked), bool)
        for i, f in enumerate(ranked):
            left = unmatched[f.image]
            if left:
                overlap = iou(np.array([f.box]), np.array(left))[0]
                best = int(np.argmax(overlap))
                if overlap[best] >= least:
                    correct[i] = True
                    left.pop(best)
        hits += int(correct.sum())
        precisions[cls] = average_precision(correct, total)
    detections = sum(1 for f in found if f.image in truth)
    true_boxes = sum(len(v) for v in truth.values())
    return {"precision": hits / detections if detections else 0.0, "recall": hits / true_boxes if true_boxes else 0.0,
            "map50": float(np.mean(list(precisions.values()))) if precisions else 0.0, "ap50": precisions,
            "detections": detections, "true_boxes": true_boxes}


def average_precision(correct: np.ndarray, total: int) -> float:
    """The area under the precision-recall curve of detections ranked best first (`correct`: each one a true match),
    precision made non-increasing from the right; 0 without true boxes."""
    if total == 0:
        return 0.0
    true_positives = np.cumsum(correct)
    recall = np.concatenate([[0.0], true_positives / total])
    precision = np.concatenate([[1.0], true_positives / np.arange(1, len(correct) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))
