"""How far a map can be trusted, measured: faithfulness (deletion, insertion, Average Drop, Increase in
Confidence), localisation (pointing game, energy in the boxes) and the sanity check's rank correlation.

Each metric is a small numpy function of the image, the map and a `forward` function (a float batch of
pixels in 0-255 -> class probabilities), so the tests check it against hand-worked cases; the model
only enters through `forward`. Every perturbed input of an image goes through it in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]  # (n, H, W, C) float pixels in 0-255 -> (n, classes) probabilities


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices by map value, highest first; ties in raster order."""
    return np.argsort(-saliency.ravel(), kind="stable")


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """How many pixels step t = 0…N replaces: round(t·pixels/N), halves rounded up."""
    return np.floor(np.arange(steps + 1) * pixels / steps + 0.5).astype(int)


def _revealed(order: np.ndarray, shape: tuple[int, ...], steps: int) -> np.ndarray:
    """(N−1, H, W) bool: at step t = 1…N−1, the first round(t·H·W/N) pixels of `order` (step 0 has none of them and
    step N all, whatever the order); (N−1, D, H, W) for a volume's voxels."""
    rank = np.empty(order.size, int)
    rank[order] = np.arange(order.size)
    counts = step_counts(order.size, steps)[1:-1]
    return rank.reshape(shape)[None] < counts.reshape(-1, *[1] * len(shape))


def deletion_inputs(image: np.ndarray, saliency: np.ndarray, steps: int) -> np.ndarray:
    """Deletion (Petsiuk et al. 2018): step t = 1…N−1 sets the first round(t·H·W/N) pixels by the map to black
    (step 0 is the image and step N black, for every map)."""
    gone = _revealed(pixel_order(saliency), saliency.shape, steps)
    return np.where(gone[..., None], 0.0, image[None].astype(np.float32))


def insertion_inputs(image: np.ndarray, blurred: np.ndarray, saliency: np.ndarray, steps: int) -> np.ndarray:
    """Insertion: from the blurred image, step t = 1…N−1 puts back the first round(t·H·W/N) original pixels by the
    map (step 0 is the blurred image and step N the image, for every map)."""
    back = _revealed(pixel_order(saliency), saliency.shape, steps)
    return np.where(back[..., None], image[None].astype(np.float32), blurred[None].astype(np.float32))


def auc(scores: Sequence[float]) -> float:
    """The area under a curve sampled at t/N, t = 0…N, by the trapezoid rule."""
    values = np.asarray(scores, np.float64)
    return float(np.sum(values[1:] + values[:-1]) / (2 * (len(values) - 1)))


def average_drop(p: float, p_masked: float) -> float:
    """Average Drop's term (Chattopadhay et al. 2018): max(0, p − p_masked) / p."""
    return max(0.0, p - p_masked) / p if p > 0 else 0.0


def increase_in_confidence(p: float, p_masked: float) -> bool:
    return p_masked > p


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of σ pixels (kernel to 3σ, edges reflected), separable along every axis but the channels', in
    float32."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in range(out.ndim - 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(kernel))
    return out.astype(np.float32)


@dataclass(frozen=True)
class Faithfulness:
    deletion_curve: list[float]
    insertion_curve: list[float]
    average_drop: float
    increase_in_confidence: bool

    @property
    def deletion_auc(self) -> float:
        return auc(self.deletion_curve)

    @property
    def insertion_auc(self) -> float:
        return auc(self.insertion_curve)


def faithfulness(forward: Forward, image: np.ndarray, blurred: np.ndarray, saliency: np.ndarray,
                 class_index: int, p: float, steps: int, batch_size: int) -> Faithfulness:
    """Deletion and insertion curves, Average Drop and Increase in Confidence of one map at input size in [0, 1]:
    2N + 2 forward passes (the image, black, the blurred image, N − 1 deleted, N − 1 inserted, the image times the
    map), in batches."""
    return faithfulness_of_maps(forward, image, blurred, [(saliency, class_index, p)], steps, batch_size)[0]


def passes_of_maps(maps: int, steps: int) -> int:
    """The forward passes M maps of one image make beyond the curves' ends, which they share: M · (2N − 1)."""
    return maps * (2 * steps - 1)


def faithfulness_of_maps(forward: Forward, image: np.ndarray, blurred: np.ndarray,
                         maps: Sequence[tuple[np.ndarray, int, float]], steps: int, batch_size: int,
                         unperturbed: np.ndarray | None = None) -> list[Faithfulness]:
    """`faithfulness` for several (map, class, p) of one image, their perturbed inputs streamed through
    `forward` in full batches (made as they are needed, so memory stays at a few batches).

    The curves' ends are the same inputs for every map: deletion starts at the image and ends black, insertion
    starts blurred and ends at the image. They go through `forward` once (the image not at all where the caller
    has its scores: `unperturbed`), so M maps cost 3 + M · (2N − 1) passes, not M · (2N + 3).
    """
    ends = [image, np.zeros_like(image), blurred] if unperturbed is None else [np.zeros_like(image), blurred]

    def perturbed() -> Iterator[np.ndarray]:
        yield np.stack(ends).astype(np.float32)
        for saliency, _, _ in maps:
            yield deletion_inputs(image, saliency, steps)
            yield insertion_inputs(image, blurred, saliency, steps)
            yield image[None].astype(np.float32) * saliency[None, ..., None]

    probabilities = _in_batches(forward, perturbed(), batch_size)
    if unperturbed is None:
        unperturbed, probabilities = probabilities[0], probabilities[1:]
    black, blur = probabilities[0], probabilities[1]
    results, per_map = [], passes_of_maps(1, steps)
    for index, (_, class_index, p) in enumerate(maps):
        scores = probabilities[2 + index * per_map : 2 + (index + 1) * per_map, class_index]
        deleted, inserted = scores[: steps - 1], scores[steps - 1 : 2 * steps - 2]
        p_masked = float(scores[-1])
        results.append(Faithfulness([float(v) for v in (unperturbed[class_index], *deleted, black[class_index])],
                                    [float(v) for v in (blur[class_index], *inserted, unperturbed[class_index])],
                                    average_drop(p, p_masked), increase_in_confidence(p, p_masked)))
    return results


def _in_batches(forward: Forward, stacks: Iterator[np.ndarray], batch_size: int) -> np.ndarray:
    """forward over the rows of every stack in turn, `batch_size` rows a call (the last call fewer)."""
    outputs, pending, held = [], [], 0
    for stack in stacks:
        pending.append(stack)
        held += len(stack)
        while held >= batch_size:
            rows = np.concatenate(pending)
            outputs.append(forward(rows[:batch_size]))
            pending, held = [rows[batch_size:]], held - batch_size
    if held:
        outputs.append(forward(np.concatenate(pending)))
    return np.concatenate(outputs)


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the original image's pixels, x1 and y1 exclusive


def pointing_hit(saliency: np.ndarray, boxes: Sequence[Box], tolerance: float) -> bool:
    """Pointing game (Zhang et al. 2018): the map's maximum (first in raster order) lies in a box or within
    `tolerance` pixels of one; pixel (row, col) has its centre at (col + ½, row + ½)."""
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    x, y = col + 0.5, row + 0.5
    for x0, y0, x1, y1 in boxes:
        dx, dy = max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)
        if np.hypot(dx, dy) <= tolerance:
            return True
    return False


def energy_in_boxes(saliency: np.ndarray, boxes: Sequence[Box]) -> float | None:
    """Energy-based pointing game (Wang et al. 2020): the share of the map's sum inside the boxes' union."""
    total = float(saliency.sum())
    if total <= 0:
        return None
    inside = np.zeros(saliency.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[max(0, int(np.ceil(y0 - 0.5))) : max(0, int(np.ceil(y1 - 0.5))),
               max(0, int(np.ceil(x0 - 0.5))) : max(0, int(np.ceil(x1 - 0.5)))] = True
    return float(saliency[inside].sum() / total)


def pointing_hit_mask(saliency: np.ndarray, mask: np.ndarray, tolerance: float) -> bool:
    """Pointing game against a region: the map's maximum lies on a pixel (a volume's voxel) of the mask, or within
    `tolerance` pixels (centre to centre) of one."""
    peak = np.array(np.unravel_index(int(np.argmax(saliency)), saliency.shape))
    inside = np.argwhere(mask)
    return bool(len(inside)) and float(np.min(np.linalg.norm(inside - peak, axis=1))) <= tolerance


def energy_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Energy-based pointing game against a region: the share of the map's sum on the mask's pixels."""
    total = float(saliency.sum())
    return None if total <= 0 else float(saliency[np.asarray(mask, bool)].sum() / total)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (average ranks for ties); 0 when either is constant."""
    ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / scale) if scale > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean."""
    data = np.asarray(values, np.float64)
    if len(data) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class LabelScores:
    """Several labels per image, summed up over n images: per label precision, recall, F1 and average precision,
    their macro F1 and their mean average precision (over the labels some image has: the others have no AP)."""

    precision: np.ndarray  # (labels,)
    recall: np.ndarray
    f1: np.ndarray
    average_precision: np.ndarray  # NaN for a label no image has
    macro_f1: float
    mean_average_precision: float


def label_scores(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> LabelScores:
    """Predicted: probability ≥ threshold. Precision TP / (TP + FP), recall TP / (TP + FN), F1 2TP / (2TP + FP + FN)
    (0 where undefined); AP = Σ_k P@k · rel_k / positives over the images ranked by probability (ties in input
    order); mAP and macro F1 their means over the labels."""
    scores = np.asarray(probabilities, np.float64)
    truth = np.asarray(truth, bool)
    predicted = scores >= threshold
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    fp = (predicted & ~truth).sum(axis=0)
    fn = (~predicted & truth).sum(axis=0)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    average = np.full(scores.shape[1], np.nan)
    for label in range(scores.shape[1]):
        hits = truth[np.argsort(-scores[:, label], kind="stable"), label]
        if hits.any():
            at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            average[label] = float((at_k * hits).sum() / hits.sum())
    present = ~np.isnan(average)
    return LabelScores(precision, recall, f1, average, float(f1.mean()) if f1.size else 0.0,
                       float(average[present].mean()) if present.any() else float("nan"))
