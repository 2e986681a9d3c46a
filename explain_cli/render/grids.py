"""How a map with a third axis is looked at: a volume's montage of slices on its three axes, a clip's overlay video and
its strip of key frames over the curve of how much each frame counts.

Every function takes the map already on the input's own grid, normalised to [0, 1], and the input as drawn (a volume's
windowed voxels (D, H, W, 1 or 3), a clip's frames (T, H, W, 3), uint8).
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from explain_cli.render.heatmaps import blend, colorize

TILE = 160  # a montage's tiles are this many pixels high
AXES = ("axis 0", "axis 1", "axis 2")  # a volume's own voxel axes: what they are in the world, its affine says


def slice_positions(side: int, count: int) -> list[int]:
    """`count` slices spread evenly through `side`, the ends left out: (i + 1) · side / (count + 1)."""
    count = max(1, min(count, side))
    return sorted({min(side - 1, int((i + 1) * side / (count + 1))) for i in range(count)})


def overlaid(shown: np.ndarray, heatmap01: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """A plane (h, w, 1 or 3) uint8 blended with its map (h, w) through the colormap."""
    rgb = np.repeat(shown, 3, axis=-1) if shown.shape[-1] == 1 else shown
    return blend(rgb, colorize(heatmap01, colormap), alpha)


def montage(shown: np.ndarray, heatmap01: np.ndarray, slices: int, colormap: str = "jet", alpha: float = 0.4,
            spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "") -> Image.Image:
    """A row per axis of the volume, each of `slices` slices across it with the map over them; each tile drawn at its
    voxels' true proportions (`spacing`, mm per voxel along each axis), `TILE` pixels high."""
    return _montage(lambda axis, index: overlaid(np.take(shown, index, axis=axis), np.take(heatmap01, index, axis=axis),
                                                 colormap, alpha), shown.shape[:3], slices, spacing, title)


def class_montage(shown: np.ndarray, classes: np.ndarray, slices: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  title: str = "", alpha: float = 0.5) -> Image.Image:
    """`montage` of a volume's segmentation: each voxel's class (`classes` on the volume's grid) in its colour."""
    from explain_cli.render.drawing import colour

    palette = np.array([colour(i) for i in range(int(classes.max(initial=0)) + 1)], np.uint8)

    def tile(axis: int, index: int) -> np.ndarray:
        plane = np.take(shown, index, axis=axis)
        rgb = np.repeat(plane, 3, axis=-1) if plane.shape[-1] == 1 else plane
        return blend(rgb, palette[np.take(classes, index, axis=axis)], alpha)

    return _montage(tile, shown.shape[:3], slices, spacing, title)


def _montage(tile: Callable[[int, int], np.ndarray], sides: Sequence[int], slices: int, spacing: Sequence[float],
             title: str) -> Image.Image:
    """The page: a row per axis, `tile(axis, index)` for each of `slices` slices across it."""
    rows: list[list[tuple[Image.Image, str]]] = []
    for axis in range(3):
        tiles = []
        for index in slice_positions(sides[axis], slices):
            plane = tile(axis, index)
            across = [a for a in range(3) if a != axis]
            height_mm, width_mm = (plane.shape[0] * spacing[across[0]], plane.shape[1] * spacing[across[1]])
            width = max(1, round(TILE * width_mm / height_mm))
            tiles.append((Image.fromarray(plane).resize((width, TILE), Image.Resampling.BILINEAR),
                          f"{AXES[axis]} = {index}"))
        rows.append(tiles)
    gap, label = 4, 14
    top = label + gap if title else 0
    width = max(sum(tile.width for tile, _ in row) + gap * (len(row) - 1) for row in rows)
    page = Image.new("RGB", (width, top + len(rows) * (TILE + label + gap)), (0, 0, 0))
    draw = ImageDraw.Draw(page)
    if title:
        draw.text((2, 1), title, fill=(255, 255, 255))
    y = top
    for row in rows:
        x = 0
        for picture, name in row:
            draw.text((x + 2, y + 1), name, fill=(220, 220, 220))
            page.paste(picture, (x, y + label))
            x += picture.width + gap
        y += TILE + label + gap
    return page


def frame_mass(heatmap01: np.ndarray) -> np.ndarray:
    """How much each frame counts: the map's mass in it over its whole mass, Σ_xy m_t / Σ m (zeros for a map of none)."""
    mass = heatmap01.reshape(len(heatmap01), -1).sum(axis=1).astype(np.float64)
    total = mass.sum()
    return mass / total if total > 0 else np.zeros_like(mass)


def key_frames(mass: np.ndarray, count: int) -> list[int]:
    """The `count` frames that count most, in their order in time."""
    return sorted(int(i) for i in np.argsort(-mass, kind="stable")[:max(1, min(count, len(mass)))])


def strip(frames: np.ndarray, heatmap01: np.ndarray, count: int, colormap: str = "jet", alpha: float = 0.4,
          title: str = "", first: int = 0) -> bytes:
    """PNG: the key frames with their maps over them, and beneath them the curve of each frame's share of the map
    (frames numbered in the video, from `first`), the key frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    mass = frame_mass(heatmap01)
    keys = key_frames(mass, count)
    aspect = frames.shape[2] / frames.shape[1]
    figure = Figure(figsize=(max(6.0, 2.0 * aspect * len(keys)), 4.4), dpi=100)
    grid = figure.add_gridspec(2, len(keys), height_ratios=[2.2, 1.0])
    for column, index in enumerate(keys):
        ax = figure.add_subplot(grid[0, column])
        ax.imshow(overlaid(frames[index], heatmap01[index], colormap, alpha))
        ax.set_title(f"frame {first + index}", fontsize=8)
        ax.axis("off")
    curve = figure.add_subplot(grid[1, :])
    numbers = np.arange(first, first + len(mass))
    curve.plot(numbers, mass, color="#1f77b4")
    curve.scatter(numbers[keys], mass[keys], color="#d62728", zorder=3, s=14)
    curve.set_xlabel("frame")
    curve.set_ylabel("share of the map")
    curve.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    if title:
        figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def video(frames: np.ndarray, heatmap01: np.ndarray, rate: float, colormap: str = "jet", alpha: float = 0.4) -> bytes:
    """An MP4 (H.264 where PyAV has it, else MPEG-4 part 2) of each frame with its map over it, at `rate` frames per
    second; sides made even (yuv420p needs them so) by dropping a last row or column."""
    import av

    height, width = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = max(2, width), max(2, height), "yuv420p"
        for frame, heat in zip(frames, heatmap01):
            picture = overlaid(frame, heat, colormap, alpha)[:height, :width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()
