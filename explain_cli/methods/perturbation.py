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
    """RISE's masks (Petsiuk et al. 2018), drawn once per run: N binary grids of cells × cells (× cells, for a volume or
    a clip), each cell kept with probability `keep`, upsampled (bi|tri)linearly to (cells + 1) cells' size and cropped
    at a random shift of up to one cell. Only the grids and shifts are stored; `chunk` makes masks at the input's size
    on demand."""

    grids: np.ndarray  # (N, cells, cells[, cells]) float32, 0 or 1
    shifts: np.ndarray  # (N, axes) int: the crop's start along each axis, in pixels of the upsampled grid
    lines: tuple[np.ndarray, ...]  # per axis (cell · (cells + 1), cells): linear interpolation along it
    sides: tuple[int, ...]  # the input's (height, width) or (depth, height, width)
    keep: float

    def __len__(self) -> int:
        return len(self.grids)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Masks start…stop-1 at the input's size: (m, *sides) float32 in [0, 1]."""
        import numpy as np

        picked = [line[self.shifts[start:stop, axis:axis + 1] + np.arange(side)]  # (m, side, cells)
                  for axis, (line, side) in enumerate(zip(self.lines, self.sides))]
        if len(self.sides) == 2:  # a picture's: two matrix products
            return (picked[0] @ self.grids[start:stop] @ picked[1].transpose(0, 2, 1)).astype(np.float32)
        masks = self.grids[start:stop]
        for along in picked:  # each axis in turn, its new side moved last: after all of them, back in order
            masks = np.einsum("msc,mc...->m...s", along, masks)
        return masks.astype(np.float32)


def rise_masks(count: int, cells: int, keep: float, seed: int, height: int, width: int,
               depth: int | None = None) -> RiseMasks:
    """`count` seeded RISE masks for an input of height × width (depth × height × width for a volume or a clip)."""
    import numpy as np

    sides = (height, width) if depth is None else (depth, height, width)
    rng = np.random.default_rng(seed)
    grids = (rng.random((count, *[cells] * len(sides))) < keep).astype(np.float32)
    cell = [-(-side // cells) for side in sides]
    shifts = np.stack([rng.integers(0, c, count) for c in cell], axis=1)
    return RiseMasks(grids, shifts, tuple(bilinear(cells, c * (cells + 1)) for c in cell), sides, keep)


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
    image: np.ndarray  # (H, W, C) float32 pixels, 0-255, at the model's input size; (D, H, W, C) for a volume
    classes: np.ndarray  # (k,) the classes explained, all from the same passes
    batch_size: int  # perturbed images per forward pass
    masks: RiseMasks | None = None  # RISE
    window: int | tuple[int, ...] = 32  # occlusion: the patch's side, in input pixels (one per axis, or the same)
    stride: int | tuple[int, ...] = 16  # occlusion: its step
    fill: float = GREY  # what is hidden becomes: mid grey for pixels, 0 for an input given as it stands


def rise(p: PerturbationInputs) -> np.ndarray:
    """RISE (Petsiuk et al. 2018): S_c = Σ_i p_c(I ⊙ M_i) · M_i / (N · keep) less its minimum, at the input's
    resolution; I ⊙ M = 128 + (I − 128) · M, so what a mask hides goes to grey, as the paper's masks of mean-centred
    images do (black, which evaluate's deletion uses, is evidence of its own to many models). Every pixel's sum holds
    about E[p_c] / keep of baseline (a pixel is in half the masks whatever it shows): without the minimum taken off, a
    map scaled by its maximum would be nearly flat."""
    import numpy as np

    saliency, _, _ = _masks_weighted(p, "rise")
    return (saliency - saliency.min(axis=1, keepdims=True)).reshape(-1, *p.image.shape[:-1]).astype(np.float32)


def _masks_weighted(p: PerturbationInputs, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every mask's image (grey where it hides) through `forward` in batches: Σ_i s_i · M_i / (N · keep) per class
    (k, H·W), Σ_i M_i / (N · keep) (H·W), and the mean score s̄ per class (k,), in float64."""
    import numpy as np

    masks = p.masks
    assert masks is not None, f"{method} needs its masks"
    positions = int(np.prod(p.image.shape[:-1]))
    weighted = np.zeros((len(p.classes), positions), np.float64)
    coverage = np.zeros(positions, np.float64)
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
    return saliency.reshape(-1, *p.image.shape[:-1]).astype(np.float32)


def occlusion(p: PerturbationInputs) -> np.ndarray:
    """Occlusion (Zeiler & Fergus 2014): S_c(x) = mean over the windows W covering x of p_c(I) − p_c(I, W grey), at
    the input's resolution. Windows step by `stride` and the last one along each axis touches the edge, so every
    pixel (voxel) is covered and the map lines up with the input whatever the window and stride."""
    import itertools

    import numpy as np

    sides = p.image.shape[:-1]
    windows = [min(w, side) for w, side in zip(_per_axis(p.window, len(sides)), sides)]
    strides = _per_axis(p.stride, len(sides))
    places = [tuple(slice(start, start + w) for start, w in zip(starts, windows)) for starts in itertools.product(
        *(_starts(side, w, stride) for side, w, stride in zip(sides, windows, strides)))]
    unperturbed = p.forward(p.image[None])[0, p.classes]
    sums = np.zeros((len(p.classes), *sides), np.float64)
    covered = np.zeros(sides, np.float64)
    for start in range(0, len(places), p.batch_size):
        chunk = places[start:start + p.batch_size]
        batch = np.repeat(p.image[None], len(chunk), axis=0)
        for patch, place in zip(batch, chunk):
            patch[place] = p.fill
        drops = unperturbed[None] - p.forward(batch)[:, p.classes]  # (m, k)
        for drop, place in zip(drops, chunk):
            sums[(slice(None), *place)] += drop.reshape(-1, *[1] * len(sides))
            covered[place] += 1.0
    return (sums / np.maximum(covered, 1.0)).astype(np.float32)


def _per_axis(value: int | tuple[int, ...], axes: int) -> tuple[int, ...]:
    return (value,) * axes if isinstance(value, int) else tuple(value)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Where windows start along one side: every `stride` pixels, and one more ending at the edge if none does."""
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def default_window(height: int, width: int) -> int:
    """Occlusion's window when none is given: a seventh of the input's shorter side (32 px at 224), as RISE's cells."""
    return max(1, round(min(height, width) / 7))
