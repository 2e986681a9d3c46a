"""Pictures drawn over an image: a segmentation's classes, with a legend of those present. numpy and Pillow only."""

from __future__ import annotations

import colorsys
import functools
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LEGEND_LINE = 16  # pixels per legend line, with Pillow's default font


@functools.lru_cache(maxsize=64)
def colour(index: int) -> tuple[int, int, int]:
    """A colour per class, far from its neighbours': hues stepped by the golden ratio, two brightnesses."""
    hue = (index * 0.6180339887) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95 if index % 2 == 0 else 0.7)
    return int(red * 255), int(green * 255), int(blue * 255)


def segmentation(original: np.ndarray, classes: np.ndarray, names: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """Each pixel's class coloured over the image (`classes` (h, w), upsampled to the image by nearest neighbour),
    and below it a legend of the classes present, most pixels first, with their share of the image."""
    height, width = original.shape[:2]
    grid = Image.fromarray(classes.astype(np.uint8), mode="L").resize((width, height), Image.Resampling.NEAREST)
    indexes = np.asarray(grid)
    palette = np.array([colour(i) for i in range(max(len(names), int(indexes.max()) + 1))], np.uint8)
    blended = (original.astype(np.float32) * (1 - alpha) + palette[indexes].astype(np.float32) * alpha)
    present, counts = np.unique(indexes, return_counts=True)
    order = [int(present[i]) for i in np.argsort(-counts, kind="stable")]
    shares = dict(zip(present.tolist(), (counts / indexes.size).tolist()))
    legend = Image.new("RGB", (width, LEGEND_LINE * len(order) + 4), "white")
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default()
    for line, index in enumerate(order):
        top = 2 + line * LEGEND_LINE
        draw.rectangle((4, top + 2, 16, top + 13), fill=colour(index))
        name = names[index] if index < len(names) else str(index)
        draw.text((22, top + 1), f"{name} ({index}): {shares[index]:.1%}", fill="black", font=font)
    picture = Image.new("RGB", (width, height + legend.height), "white")
    picture.paste(Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)), (0, 0))
    picture.paste(legend, (0, height))
    return picture
