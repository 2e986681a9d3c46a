"""Shared fixtures: models that never touch the network, and small images.

Built-in architectures are built with weights=None and fixed seeds, saved to a file, and loaded
back through the same path a user's `--weights PATH` takes. `tiny_model` is a small CNN trained
here, on synthetic images, so that its explanations can be checked against where the object is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHAPE_CLASSES = ("red", "green", "blue")  # the colour of the square is the class
TINY_SIZE = 64


@pytest.fixture(scope="session")
def keras():
    from explain_cli.backend import load_tensorflow

    return load_tensorflow()[1]


def _saved_weights(keras, constructor: str, path: Path) -> Path:
    keras.utils.set_random_seed(1234)
    model = getattr(keras.applications, constructor)(weights=None)
    model.save_weights(path)
    return path


@pytest.fixture(scope="session")
def resnet50_weights(keras, tmp_path_factory) -> Path:
    return _saved_weights(keras, "ResNet50", tmp_path_factory.mktemp("resnet50") / "resnet50.weights.h5")


@pytest.fixture(scope="session")
def resnet50_legacy_h5(keras, resnet50_weights, tmp_path_factory) -> Path:
    """The same weights in the legacy .h5 layout, under the name Keras caches its download with."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model = keras.applications.ResNet50(weights=None)
    model.load_weights(resnet50_weights)
    path = tmp_path_factory.mktemp("legacy") / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


@pytest.fixture(scope="session")
def vgg16_weights(keras, tmp_path_factory) -> Path:
    return _saved_weights(keras, "VGG16", tmp_path_factory.mktemp("vgg16") / "vgg16.weights.h5")


@pytest.fixture(scope="session")
def nested_model_file(keras, tmp_path_factory) -> Path:
    """A typical fine-tune: Input -> ResNet50 backbone (a nested keras.Model) -> GAP -> Dense(5, softmax)."""
    keras.utils.set_random_seed(99)
    inputs = keras.Input((224, 224, 3))
    backbone = keras.applications.ResNet50(include_top=False, weights=None)
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="scores")(x)
    path = tmp_path_factory.mktemp("nested") / "finetuned.keras"
    keras.Model(inputs, outputs, name="finetuned").save(path)
    return path


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


@pytest.fixture(scope="session")
def tiny_model(keras, tmp_path_factory) -> Path:
    """A small CNN trained on coloured squares; saved as .keras with its own rescaling inside."""
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
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(SHAPE_CLASSES) + "\n")
    return path


@pytest.fixture
def photo_tree(tmp_path) -> Path:
    """photos/{a.png, b.jpg, sub/a.png, notes.txt}: two a.png in different folders, one non-image."""
    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name, size in (("a.png", (80, 96)), ("b.jpg", (64, 64)), ("sub/a.png", (120, 70))):
        Image.fromarray(make_scene(rng, *size).image).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root
