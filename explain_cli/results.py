"""What the library hands back: frozen values with numpy arrays and pictures, never TensorFlow tensors.

An `Explanation` is one (image, class) map with what it explains; `heatmap`, `overlay` and `figure` draw it the way the
command line's files are drawn, and a notebook shows it inline (`_repr_png_`). Rendering is numpy and Pillow only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from explain_cli.render import heatmaps as render
from explain_cli.io.files import Prediction

from explain_cli.inputs import grids
from explain_cli.render import grids as grid_render

SLICES = 5  # a montage's slices along each axis, a strip's key frames


def map_title(label: str, class_index: int, probability: float, method: str, layer: str | None) -> str:
    """A map's title: its class, the class's probability, the method and its layer (none: a perturbation method)."""
    return f"{label} ({class_index}): p = {probability:.3f}, {method}" + (f" at {layer}" if layer else "")


def draw_grid(value: Explanation, heatmap01: np.ndarray, title: str, colormap: str, alpha: float,
              slices: int = SLICES) -> Image.Image:
    """A volume's montage, or a clip's strip of key frames over its curve, as a picture."""
    grid = value.grid
    assert grid is not None, "a picture's explanation is drawn by overlay()"
    if grid.kind == grids.VOLUME:
        return grid_render.montage(value.image, heatmap01, slices, colormap, alpha, grid.spacing, title)
    with Image.open(io.BytesIO(grid_render.strip(value.image, heatmap01, slices, colormap, alpha, title,
                                                 grid.start))) as page:
        picture: Image.Image = page.convert("RGB")
        return picture


def frozen_array(array: np.ndarray) -> np.ndarray:
    """A read-only view of the array: a value handed out cannot be changed through it (the array itself, perhaps the
    caller's own, keeps its flags)."""
    view: np.ndarray = np.asarray(array).view()
    view.setflags(write=False)
    return view


TARGET_KINDS = {"classes": "class", "binary": "class", "labels": "label", "value": "value", "pixels": "region",
                "similarity": "similarity"}


@dataclass(frozen=True)
class Target:
    """What a map explains: its `kind`, "class" (a classifier's class), "label" (one of several labels per image),
    "value" (a value head's output), "region" (a segmentation's class summed over its region), "box" (a detection) or
    "similarity" (the cosine of the model's output to a reference vector: `class_index` numbers the reference,
    `label` names it); the class; a detection's box (x0, y0, x1, y1, the image's pixels); a region's share of the image's pixels."""

    kind: str
    class_index: int
    label: str
    box: tuple[float, float, float, float] | None = None
    share: float | None = None


@dataclass(frozen=True, eq=False)
class Explanation:
    """Why the model gave `class_index` to one image: the method's map at the layer's resolution, and what it explains.

    `probability` is the class's probability for the image (the manifest's `score`; a value head's value; a
    segmentation's share of pixels), `target_score` the score that was differentiated (the logit, or the probability
    with score="probability"; a value; a segmentation class's logits summed over its region), `rank` the class's place
    among the image's predictions (1: the top one).
    """

    source: str | int
    class_index: int
    label: str
    rank: int
    probability: float
    target_score: float
    layer: str | None
    method: str
    map: np.ndarray = field(repr=False)  # float32, not normalised: (h, w) at the layer, or the input for pixel methods
    image: np.ndarray = field(repr=False)  # the original, upright RGB uint8 (height, width, 3)
    share: float | None = None  # a segmentation: the explained region's share of the image's pixels
    mean_probability: float | None = None  # a segmentation: the class's mean probability over the region
    box: tuple[float, float, float, float] | None = None  # a detection: its box (x0, y0, x1, y1), the image's pixels
    target_kind: str = "class"  # Target.kind
    input: str | None = None  # a model of several inputs: the input the map belongs to
    attributions: dict[str, np.ndarray] | None = field(default=None, repr=False)  # and each of its other inputs of
    # values' attribution to the same score, gradient × input, by input name
    grid: grids.Grid | None = field(default=None, repr=False)  # a volume or a clip (inputs/grids.Grid): `map` is (d, h, w), `image`
    # its voxels windowed (D, H, W, 1 or 3) or its frames (T, H, W, 3) at their own size; its affine or frame rate

    @property
    def target(self) -> Target:
        """What was explained: a class, a label, a value, a region of a class or a box."""
        return Target(self.target_kind, self.class_index, self.label, self.box, self.share)

    def heatmap(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The map normalised to [0, 1] (map / max, negatives 0) and upsampled bilinearly to `size` = (width,
        height), by default the original image's: what the overlays show. A volume's or a clip's: resampled
        trilinearly to `size` = (depth, height, width), by default its own grid."""
        if self.grid is not None:
            return grids.resample(render.normalise(self.map), size or self.image.shape[:3])
        width, height = size if size is not None else (self.image.shape[1], self.image.shape[0])
        return render.upsample(render.normalise(self.map), width, height)

    def overlay(self, colormap: str = "jet", alpha: float = 0.4) -> Image.Image:
        """(1 − alpha) · image + alpha · colormap(heatmap), at the original image's size, as a PIL image; a
        detection's box drawn over it. A volume's: its montage of slices on each axis; a clip's: its key frames over
        the curve of each frame's share of the map."""
        if self.grid is not None:
            return self.figure(colormap, alpha)
        blended = render.overlay_on(render.backdrop(self.image, alpha), render.normalise(self.map), colormap)
        if self.box is None:
            return blended
        from explain_cli.render import drawing

        return drawing.boxes(blended, [(self.box, self.class_index, f"{self.label} {self.probability:.2f}")])

    def figure(self, colormap: str = "jet", alpha: float = 0.4) -> Image.Image:
        """The panel original | heatmap | overlay, titled with the class, its probability, the method and the layer;
        a volume's montage, a clip's strip of key frames (`slices` of them)."""
        title = map_title(self.label, self.class_index, self.probability, self.method, self.layer)
        if self.grid is not None:
            return draw_grid(self, self.heatmap(), title, colormap, alpha)
        heatmap = render.normalise(self.map)
        blended = np.asarray(render.overlay_on(render.backdrop(self.image, 0.4), heatmap, colormap))
        with Image.open(io.BytesIO(render.figure(self.image, heatmap, blended, title, colormap))) as panel:
            picture: Image.Image = panel.convert("RGB")
        return picture

    def _repr_png_(self) -> bytes:
        return render.encode(self.overlay(), "png")

    def __repr__(self) -> str:
        return (f"Explanation(source={self.source!r}, class_index={self.class_index}, label={self.label!r}, "
                f"probability={self.probability:.4f}, method={self.method!r}, layer={self.layer!r}, "
                f"map={self.map.shape})")


@dataclass(frozen=True, eq=False)
class Similarity:
    """Why two images are alike: their embeddings' cosine, `a`'s map for its likeness to b's embedding held fixed, and
    `b`'s for its likeness to a's."""

    similarity: float
    a: Explanation
    b: Explanation


@dataclass(frozen=True, eq=False)
class ImagePredictions:
    """An image's most probable classes, and every class's probability."""

    source: str | int
    predictions: tuple[Prediction, ...]
    probabilities: np.ndarray = field(repr=False)

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


@dataclass(frozen=True, eq=False)
class Segmentation(ImagePredictions):
    """A segmentation's prediction for one image: its classes by their share of the pixels (`predictions`, each a
    Region with its mean probability; `probabilities` every class's share), each pixel's class at the image's own
    size, and with a true mask, each class's pixels predicted and true (`intersection`) and predicted or true
    (`union`), counted at the true mask's size."""

    class_map: np.ndarray = field(repr=False)  # (height, width) int: each pixel's class, the image's own size
    intersection: np.ndarray | None = field(default=None, repr=False)  # (classes,)
    union: np.ndarray | None = field(default=None, repr=False)  # (classes,)

    @property
    def iou(self) -> np.ndarray | None:
        """Each class's IoU with the true mask, intersection / union (NaN for a class in neither); None without one."""
        return None if self.intersection is None else ious([self])


def ious(segmentations: Sequence[Segmentation]) -> np.ndarray:
    """Each class's IoU over the images with true masks, Σ intersection / Σ union (NaN for a class in none of either):
    what `explain segment --truth-masks` prints."""
    intersections: list[np.ndarray] = []
    unions: list[np.ndarray] = []
    for s in segmentations:
        if s.intersection is not None and s.union is not None:
            intersections.append(s.intersection)
            unions.append(s.union)
    if not intersections:
        raise ValueError("no segmentation here has a true mask to measure its IoU against")
    both, either = np.sum(intersections, axis=0), np.sum(unions, axis=0)
    measured: np.ndarray = np.divide(both, either, out=np.full(len(both), np.nan), where=either > 0)
    return measured


@dataclass(frozen=True)
class Detection(Prediction):
    """A box the model found: its place among the image's detections (`rank`, 1: the most confident), class, score (its
    class's probability, `probability`) and box (x0, y0, x1, y1) in the image's pixels."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False,
                                      compare=False)  # (C,) every class's probability for it

    @property
    def score(self) -> float:
        """Its class's probability."""
        return self.probability


@dataclass(frozen=True, eq=False)
class Detections(ImagePredictions):
    """A detector's prediction for one image: its detections (`predictions`, each a Detection: rank, class,
    score, box in the image's pixels), most confident first; `probabilities` each one's class probabilities (k, C)."""

    @property
    def boxes(self) -> np.ndarray:
        """(k, 4) the detections' boxes, x0, y0, x1, y1 in the image's pixels."""
        return np.array([d.box for d in self.predictions if isinstance(d, Detection)], np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class Layer:
    """A layer output a method can explain: its name (a path inside nested or subclassed layers), the shape a method
    sees (h, w, channels), whether it is a transformer's tokens laid on their patch grid, and whether it is the
    default."""

    name: str
    shape: tuple[int | None, ...]
    kind: str
    tokens: bool
    default: bool
    detail: str = ""  # what `explain layers` prints of it: its output's shape and its layer's class


@dataclass(frozen=True, eq=False)
class Activations:
    """One image's activations at the layers asked for: each layer's output (h, w, channels), float32."""

    source: str | int
    layers: dict[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True, eq=False)
class ClassVisualisation:
    """The picture the model finds most like a class, by gradient ascent (`picture`, uint8), the pictures on the way
    (`snapshots`: (step, picture)), and the class's logit before each step and after the last (`logits`)."""

    class_index: int
    label: str
    picture: np.ndarray = field(repr=False)
    snapshots: tuple[tuple[int, np.ndarray], ...] = field(repr=False)
    logits: tuple[float, ...]

    def _repr_png_(self) -> bytes:
        return render.encode(self.picture, "png")


@dataclass(frozen=True)
class MethodSummary:
    """A method's means over the images evaluated, with 95 % bootstrap intervals (None where not measured)."""

    method: str
    images: int
    means: dict[str, float | None]
    intervals: dict[str, tuple[float, float] | None]

    @property
    def faithfulness_gap(self) -> float:
        """insertion − deletion: the order the methods are printed in, best first."""
        return (self.means["insertion_auc"] or 0.0) - (self.means["deletion_auc"] or 0.0)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measured: a record per image, class and method (the lines of evaluation.jsonl), each method's
    means (best first, as the command line prints them), and with sanity=True a record per stage of the cascade."""

    records: tuple[dict[str, Any], ...]
    summaries: tuple[MethodSummary, ...]
    sanity: tuple[dict[str, Any], ...] = ()

    def summary(self, method: str) -> MethodSummary:
        return next(s for s in self.summaries if s.method == method)
