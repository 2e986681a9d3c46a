"""How a picture is fitted to a model's input: stretched to it, or letterboxed (scaled whole, centred on grey), and
how boxes and maps over the input come back to the picture's own pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESIZES = ("stretch", "letterbox")
LETTERBOX_GREY = 114  # what YOLO's letterbox pads with


@dataclass(frozen=True)
class Canvas:
    """How a picture is fitted to the model's input of height × width: "stretch"ed to it, or "letterbox"ed (scaled to
    fit whole, its aspect kept, centred on grey 114, as YOLO's training pictures are); and back: boxes and maps over the
    input to the picture's own pixels."""

    resize: str
    height: int
    width: int

    def fit(self, image_height: int, image_width: int) -> tuple[float, int, int, int, int]:
        """A letterbox's (scale, top, left, content height, content width) at the input."""
        scale = min(self.height / image_height, self.width / image_width)
        inner_h, inner_w = max(1, round(image_height * scale)), max(1, round(image_width * scale))
        return scale, (self.height - inner_h) // 2, (self.width - inner_w) // 2, inner_h, inner_w

    def to_image(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """xyxy boxes in the input's pixels -> the picture's (height, width), clipped to it."""
        h, w = image_size
        boxes = np.asarray(boxes, np.float64)
        if self.resize == "letterbox":
            scale, top, left, _, _ = self.fit(h, w)
            placed = (boxes - np.array([left, top, left, top])) / scale
        else:
            placed = boxes * np.array([w / self.width, h / self.height, w / self.width, h / self.height])
        return np.clip(placed, 0, [w, h, w, h])

    def to_input(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """xyxy boxes in the picture's pixels -> the input's."""
        h, w = image_size
        boxes = np.asarray(boxes, np.float64)
        if self.resize == "letterbox":
            scale, top, left, _, _ = self.fit(h, w)
            return boxes * scale + np.array([left, top, left, top])
        return boxes * np.array([self.width / w, self.height / h, self.width / w, self.height / h])

    def content(self, array: np.ndarray, image_size: tuple[int, int], nearest: bool = False) -> np.ndarray:
        """A map (or a class map, `nearest`) over the input, of any resolution, cut to the picture's part of a
        letterbox (first resized to the input's pixels); as it is when stretched."""
        if self.resize != "letterbox":
            return array
        _, top, left, inner_h, inner_w = self.fit(*image_size)
        if array.shape[:2] != (self.height, self.width):
            resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
            mode = "I" if nearest else "F"
            kind = np.int32 if nearest else np.float32
            array = np.asarray(Image.fromarray(np.ascontiguousarray(array, kind), mode).resize(
                (self.width, self.height), resample)).astype(kind)
        return array[top:top + inner_h, left:left + inner_w]


def inside(places: list[tuple[int, int, int, int] | None], height: int, width: int) -> np.ndarray | None:
    """(b, height, width) float32, 1 where each picture lies on the input (all of it where it was stretched), from each
    letterboxed picture's (top, left, height, width); None where none was letterboxed."""
    if all(place is None for place in places):
        return None
    planes = np.ones((len(places), height, width), np.float32)
    for plane, place in zip(planes, places):
        if place is not None:
            top, left, inner_h, inner_w = place
            plane[:] = 0.0
            plane[top:top + inner_h, left:left + inner_w] = 1.0
    return planes


def at_output(planes: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(b, H, W) planes at the input's resolution -> (b, h, w) at the output's, by nearest neighbour."""
    rows = (np.arange(size[0]) * planes.shape[1] // size[0])[:, None]
    cols = (np.arange(size[1]) * planes.shape[2] // size[1])[None, :]
    return planes[:, rows, cols]  # type: ignore[no-any-return]


def letterboxed(image: Image.Image, width: int, height: int) -> Image.Image:
    """The picture scaled to fit the input whole (its aspect kept), centred on grey 114."""
    scale, top, left, inner_h, inner_w = Canvas("letterbox", height, width).fit(image.height, image.width)
    canvas = Image.new(image.mode, (width, height), (LETTERBOX_GREY,) * len(image.getbands()))
    canvas.paste(image.resize((inner_w, inner_h), Image.Resampling.BILINEAR), (left, top))
    return canvas
