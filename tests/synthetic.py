"""Synthetic data a model can learn in seconds: a coloured square on grey clutter, the colour its class.

Used by the tests (a model that knows something, so explanations can be checked against where the
square is) and by scripts/compare_methods.py (a picture whose right answer is visible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPE_CLASSES = ("red", "green", "blue")  # the colour of the square is the class
TINY_SIZE = 64


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (h, w, 3) uint8
    label: int
    box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive), in image pixels


def make_scene(rng: np.random.Generator, height: int = TINY_SIZE, width: int = TINY_SIZE) -> Scene:
    """A coloured square at a random place on grey clutter; the colour is the class."""
    image = rng.integers(60, 160, size=(height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    for _ in range(6):  # grey bars: clutter without colour
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[top : top + rng.integers(2, 6), left : left + rng.integers(4, 20)] = rng.integers(0, 255)
    label = int(rng.integers(0, len(SHAPE_CLASSES)))
    side = int(rng.integers(height // 6, height // 4))
    top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
    color = np.zeros(3, np.uint8)
    color[label] = 230
    image[top : top + side, left : left + side] = color
    return Scene(image, label, (top, left, top + side, left + side))


def train_tiny_model(keras, path: Path) -> Path:
    """A small CNN trained on coloured squares, saved as .keras with its own rescaling inside."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    scenes = [make_scene(rng) for _ in range(1200)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([s.label for s in scenes])
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((TINY_SIZE, TINY_SIZE, 3)),
            layers.Rescaling(1 / 255.0, name="rescale"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(len(SHAPE_CLASSES), activation="softmax", name="scores"),
        ],
        name="tiny",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    model.save(path)
    return path


