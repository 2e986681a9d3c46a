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




SHAPES = ("disc", "square", "cross", "ring")  # the outline is the class, whatever its colour
SHAPES_SIZE = 64


def make_shape(rng: np.random.Generator, size: int = SHAPES_SIZE) -> Scene:
    """One of SHAPES, in a random colour, size and place, on a noisy background of another brightness."""
    background = rng.integers(40, 200)
    image = np.clip(rng.normal(background, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    label = int(rng.integers(0, len(SHAPES)))
    radius = int(rng.integers(size // 7, size // 4))
    cy, cx = (int(rng.integers(radius + 2, size - radius - 2)) for _ in range(2))
    y, x = np.mgrid[:size, :size]
    dy, dx = y - cy, x - cx
    distance = np.hypot(dy, dx)
    bar = max(2, radius // 3)
    mask = {
        "disc": distance <= radius,
        "square": (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85),
        "cross": ((np.abs(dy) <= bar) | (np.abs(dx) <= bar)) & (np.abs(dy) <= radius) & (np.abs(dx) <= radius),
        "ring": (distance <= radius) & (distance >= radius - bar),
    }[SHAPES[label]]
    colour = rng.integers(0, 256, 3)
    while abs(int(colour.mean()) - int(background)) < 60:  # the shape stands out from its background
        colour = rng.integers(0, 256, 3)
    image[mask] = colour
    rows, cols = np.nonzero(mask)
    return Scene(image, label, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))


def train_shapes_model(keras, path: Path, preprocess: str = "none", count: int = 2000, epochs: int = 8) -> Path:
    """A conv / BatchNorm / ReLU classifier of SHAPES, as users build them.

    preprocess "none": Rescaling(1/255) is the model's first layer (explained with --preprocess none);
    otherwise the model was trained on imagenet_utils.preprocess_input(mode=preprocess) inputs.
    """
    from keras.applications import imagenet_utils

    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    scenes = [make_shape(rng) for _ in range(count)]
    x = np.stack([s.image for s in scenes]).astype("float32")
    y = np.array([s.label for s in scenes])
    layers = keras.layers
    stack: list = [keras.Input((SHAPES_SIZE, SHAPES_SIZE, 3))]
    if preprocess == "none":
        stack.append(layers.Rescaling(1 / 255.0, name="rescale"))
    else:
        x = np.asarray(imagenet_utils.preprocess_input(x, mode=preprocess))
    for block, width in enumerate((16, 32, 64), start=1):
        stack += [
            layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{block}"),
            layers.BatchNormalization(momentum=0.9, name=f"bn{block}"),  # short training: track fast
            layers.ReLU(name=f"relu{block}"),
        ]
        if block < 3:
            stack.append(layers.MaxPooling2D(name=f"pool{block}"))
    stack += [layers.GlobalAveragePooling2D(name="gap"), layers.Dense(len(SHAPES), name="logits")]
    model = keras.Sequential(stack, name=f"shapes_{preprocess}")
    steps = epochs * -(-count // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path
