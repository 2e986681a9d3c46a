"""Pictures drawn over an image: a segmentation's classes, with a legend of those present; a detector's boxes, captioned.
numpy and Pillow only."""

from __future__ import annotations

import colorsys
import functools
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LEGEND_LINE = 16  # pixels per legend line, with Pillow's default font
MAX_SIDE = 640  # a segmentation picture's longest side, at most: the classes are far coarser than a photo
DETAIL = 2  # ... and at most this many times the classes' own longest side (a PNG of a photo costs ~40 ns a pixel)


@functools.lru_cache(maxsize=64)
def colour(index: int) -> tuple[int, int, int]:
    """A colour per class, far from its neighbours': hues stepped by the golden ratio, two brightnesses."""
    hue = (index * 0.6180339887) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95 if index % 2 == 0 else 0.7)
    return int(red * 255), int(green * 255), int(blue * 255)


def segmentation(original: np.ndarray, classes: np.ndarray, names: Sequence[str], alpha: float = 0.5,
                 longest: int = MAX_SIDE) -> Image.Image:
    """Each pixel's class coloured over the image (`classes` (h, w), upsampled by nearest neighbour; the picture at
    most `longest` pixels, and DETAIL times the classes', on its longest side: the model's classes are far coarser
    than a photo's pixels), and below it a legend of the classes present, most pixels first, with their share of the
    image."""
    height, width = original.shape[:2]
    scale = min(1.0, min(longest, DETAIL * max(classes.shape)) / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(original)
    if size != (width, height):
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    indexes = Image.fromarray(classes.astype(np.uint8), mode="L").resize(size, Image.Resampling.NEAREST)
    count = max(len(names), int(classes.max()) + 1)
    painted = indexes.copy()
    painted.putpalette([channel for i in range(min(count, 256)) for channel in colour(i)])
    blended = Image.blend(picture, painted.convert("RGB"), alpha)
    counts = np.bincount(np.asarray(indexes).ravel(), minlength=count)
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
    legend = Image.new("RGB", (size[0], LEGEND_LINE * len(order) + 4), "white")
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default()
    for line, index in enumerate(order):
        top = 2 + line * LEGEND_LINE
        draw.rectangle((4, top + 2, 16, top + 13), fill=colour(index))
        name = names[index] if index < len(names) else str(index)
        draw.text((22, top + 1), f"{name} ({index}): {counts[index] / counts.sum():.1%}", fill="black", font=font)
    whole = Image.new("RGB", (size[0], size[1] + legend.height), "white")
    whole.paste(blended, (0, 0))
    whole.paste(legend, (0, size[1]))
    return whole


def boxes(picture: np.ndarray | Image.Image, drawn: Sequence[tuple[tuple[float, float, float, float], int, str]],
          width: int = 2) -> Image.Image:
    """Boxes drawn over a picture: each (x0, y0, x1, y1) in its pixels, in its class's colour, with its caption on a
    band of that colour above it (inside the picture where the box touches its top)."""
    canvas = (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for (x0, y0, x1, y1), class_index, caption in drawn:
        fill = colour(class_index)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=fill, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        band = bottom - top + 4
        y = y0 - band if y0 - band >= 0 else y0
        draw.rectangle((x0, y, x0 + right - left + 4, y + band), fill=fill)
        draw.text((x0 + 2, y + 2 - top), caption, fill="black" if sum(fill) > 360 else "white", font=font)
    return canvas
