"""Perturbation methods: maps from forward passes alone, so they explain any model that can be run, layers or not.

A perturbation method is a function of `PerturbationInputs` (one image, its explained classes, and a forward
function over batches of perturbed images) returning (k, h, w) maps, plus one entry in methods/registry.py. It
needs no TensorFlow: the forward function is whatever runs the model (a compiled Keras step, a SavedModel
signature, an interpreter, an ONNX Runtime session). Images are float pixels, 0-255, at the model's input size,
before any preprocessing: what is hidden goes to mid grey, as a person would see it. (An array given as the model's
input is perturbed as it stands, what is hidden going to 0 there: black for [0, 1], mid grey for [-1, 1] and
mean-centred inputs, the baseline Captum's methods take by default.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy is imported when a method runs: the command line's help lists these names without it
    import numpy as np

Forward = Callable[["np.ndarray"], "np.ndarray"]  # (n, H, W, C) float32 pixels -> (n, classes) probabilities
GREY = 128.0


@dataclass(frozen=True)
class RiseMasks:
    """RISE's masks (Petsiuk et al. 2018), drawn once per run: N binary grids of cells × cells, each cell kept with
    probability `keep`, upsampled bilinearly to (cells + 1) cells' size and cropped at a random shift of up to one
    cell. Only the grids and shifts are stored; `chunk` makes masks at the input's size on demand."""

    grids: np.ndarray  # (N, cells, cells) float32, 0 or 1
    shifts: np.ndarray  # (N, 2) int: the crop's top and left, in pixels of the upsampled grid
    rows: np.ndarray  # (cell_h · (cells + 1), cells): bilinear interpolation down the rows
    cols: np.ndarray  # (cell_w · (cells + 1), cells): across the columns
    height: int
    width: int
    keep: float

    def __len__(self) -> int:
        return len(self.grids)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Masks start…stop-1 at the input's size: (m, H, W) float32 in [0, 1]."""
        import numpy as np

        top, left = self.shifts[start:stop, :1], self.shifts[start:stop, 1:]
        rows = self.rows[top + np.arange(self.height)]  # (m, H, cells)
        cols = self.cols[left + np.arange(self.width)]  # (m, W, cells)
        return (rows @ self.grids[start:stop] @ cols.transpose(0, 2, 1)).astype(np.float32)


def rise_masks(count: int, cells: int, keep: float, seed: int, height: int, width: int) -> RiseMasks:
    """`count` seeded RISE masks for an input of height × width."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grids = (rng.random((count, cells, cells)) < keep).astype(np.float32)
    cell_h, cell_w = -(-height // cells), -(-width // cells)
    shifts = np.stack([rng.integers(0, cell_h, count), rng.integers(0, cell_w, count)], axis=1)
    return RiseMasks(grids, shifts, bilinear(cells, cell_h * (cells + 1)), bilinear(cells, cell_w * (cells + 1)),
                     height, width, keep)


def bilinear(size: int, to: int) -> np.ndarray:
    """(to, size): the matrix that resizes a line of `size` values to `to` by linear interpolation (pixel centres
    aligned, edges held)."""
    import numpy as np

    position = np.clip((np.arange(to) + 0.5) * size / to - 0.5, 0, size - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size - 1)
    weights = np.zeros((to, size), np.float32)
    np.add.at(weights, (np.arange(to), low), 1.0 - (position - low))
    np.add.at(weights, (np.arange(to), high), position - low)
    return weights


@dataclass(frozen=True)
class PerturbationInputs:
    forward: Forward
    image: np.ndarray  # (H, W, C) float32 pixels, 0-255, at the model's input size
    classes: np.ndarray  # (k,) the classes explained, all from the same passes
    batch_size: int  # perturbed images per forward pass
    masks: RiseMasks | None = None  # RISE
    window: int = 32  # occlusion: the patch's side, in input pixels
    stride: int = 16  # occlusion: its step
    fill: float = GREY  # what is hidden becomes: mid grey for pixels, 0 for an input given as it stands


def rise(p: PerturbationInputs) -> np.ndarray:
    """RISE (Petsiuk et al. 2018): S_c = Σ_i p_c(I ⊙ M_i) · M_i / (N · keep) less its minimum, at the input's
    resolution; I ⊙ M = 128 + (I − 128) · M, so what a mask hides goes to grey, as the paper's masks of mean-centred
    images do (black, which evaluate's deletion uses, is evidence of its own to many models). Every pixel's sum holds
    about E[p_c] / keep of baseline (a pixel is in half the masks whatever it shows): without the minimum taken off, a
    map scaled by its maximum would be nearly flat."""
    import numpy as np

    saliency, _, _ = _masks_weighted(p, "rise")
    height, width = p.image.shape[:2]
    return (saliency - saliency.min(axis=1, keepdims=True)).reshape(-1, height, width).astype(np.float32)


def _masks_weighted(p: PerturbationInputs, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every mask's image (grey where it hides) through `forward` in batches: Σ_i s_i · M_i / (N · keep) per class
    (k, H·W), Σ_i M_i / (N · keep) (H·W), and the mean score s̄ per class (k,), in float64."""
    import numpy as np

    masks = p.masks
    assert masks is not None, f"{method} needs its masks"
    height, width = p.image.shape[:2]
    weighted = np.zeros((len(p.classes), height * width), np.float64)
    coverage = np.zeros(height * width, np.float64)
    total = np.zeros(len(p.classes), np.float64)
    for start in range(0, len(masks), p.batch_size):
        chunk = masks.chunk(start, min(start + p.batch_size, len(masks)))
        scores = p.forward(p.fill + (p.image[None] - p.fill) * chunk[..., None])[:, p.classes].astype(np.float64)
        flat = chunk.reshape(len(chunk), -1)
        weighted += scores.T @ flat
        coverage += flat.sum(axis=0)
        total += scores.sum(axis=0)
    scale = len(masks) * masks.keep
    return weighted / scale, coverage / scale, total / len(masks)


def drise(p: PerturbationInputs) -> np.ndarray:
    """D-RISE (Petsiuk et al. 2021): S_t = Σ_i (s_t,i − s̄_t) · M_i / (N · keep), s_t,i the masked image i's similarity to
    target t (`forward` returns (m, targets)), s̄_t its mean over the masks. Taking the mean off, not the minimum as
    rise does, leaves a pixel that does not matter at about 0 (it is kept in masks of every score alike), so the map's
    energy is where the target's score rose or fell; the negatives (pixels whose presence lowered it) are kept."""
    import numpy as np

    weighted, coverage, mean = _masks_weighted(p, "drise")
    saliency = weighted - mean[:, None] * coverage[None]
    height, width = p.image.shape[:2]
    return saliency.reshape(-1, height, width).astype(np.float32)


def occlusion(p: PerturbationInputs) -> np.ndarray:
    """Occlusion (Zeiler & Fergus 2014): S_c(x) = mean over the windows W covering x of p_c(I) − p_c(I, W grey), at
    the input's resolution. Windows step by `stride` and the last one of a row or column touches the edge, so every
    pixel is covered and the map lines up with the image whatever the window and stride."""
    import numpy as np

    height, width = p.image.shape[:2]
    window_h, window_w = min(p.window, height), min(p.window, width)
    places = [(top, left) for top in _starts(height, window_h, p.stride) for left in _starts(width, window_w, p.stride)]
    unperturbed = p.forward(p.image[None])[0, p.classes]
    sums = np.zeros((len(p.classes), height, width), np.float64)
    covered = np.zeros((height, width), np.float64)
    for start in range(0, len(places), p.batch_size):
        chunk = places[start:start + p.batch_size]
        batch = np.repeat(p.image[None], len(chunk), axis=0)
        for patch, (top, left) in zip(batch, chunk):
            patch[top:top + window_h, left:left + window_w] = p.fill
        drops = unperturbed[None] - p.forward(batch)[:, p.classes]  # (m, k)
        for drop, (top, left) in zip(drops, chunk):
            sums[:, top:top + window_h, left:left + window_w] += drop[:, None, None]
            covered[top:top + window_h, left:left + window_w] += 1.0
    return (sums / np.maximum(covered, 1.0)).astype(np.float32)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Where windows start along one side: every `stride` pixels, and one more ending at the edge if none does."""
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def default_window(height: int, width: int) -> int:
    """Occlusion's window when none is given: a seventh of the input's shorter side (32 px at 224), as RISE's cells."""
    return max(1, round(min(height, width) / 7))
