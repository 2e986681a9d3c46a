"""Shared fixtures: models that never touch the network, and small images.

Built-in architectures are built with weights=None and fixed seeds, saved to a file, and loaded
back through the same path a user's `--weights PATH` takes. `tiny_model` is a small CNN trained
here, on synthetic images, so that its explanations can be checked against where the object is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import SHAPE_CLASSES, SHAPES, make_scene
from tests.trained import Trainer

# The trained fixtures (tests/trained.py) and the kind each is made by.
TRAINED = {"tiny_model": "tiny", "shapes_model": "shapes", "marks_model": "marks", "multilabel_model": "multilabel",
           "segmenter_model": "segmenter", "detector_model": "detector"}


def pytest_configure(config) -> None:
    if "EXPLAIN_CACHE" not in os.environ:  # converted passes (model/runtime.py) of the tests' models: not in the user's cache
        os.environ["EXPLAIN_CACHE"] = tempfile.mkdtemp(prefix="explain-cache-")
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider: made afresh in a temporary folder
    config.trainer = Trainer(cache.mkdir("trained") if cache is not None else Path(tempfile.mkdtemp(prefix="trained-")))


def pytest_collection_modifyitems(session, config, items) -> None:
    """Start making, all at once and in the background, every trained model the collected tests need."""
    needed = {TRAINED[name] for item in items for name in getattr(item, "fixturenames", ()) if name in TRAINED}
    config.trainer.start(sorted(needed))


@pytest.fixture(scope="session")
def keras():
    from explain_cli.model.backend import load_tensorflow

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


@pytest.fixture(scope="session")
def tiny_model(pytestconfig) -> Path:
    """A small CNN trained on coloured squares (tests/synthetic.py), made by tests/trained.py."""
    return pytestconfig.trainer.get("tiny") / "tiny.keras"


@pytest.fixture(scope="session")
def shapes_model(pytestconfig):
    """shapes_model(preprocess) -> a trained conv/BN/ReLU classifier of SHAPES (tests/synthetic.py).

    "none" has Rescaling(1/255) inside, as users' models usually do; "caffe", "tf" and "torch" take inputs
    preprocessed that way, outside the model (synthetic.preprocessed_twin).
    """
    folder = pytestconfig.trainer.get("shapes")
    return lambda preprocess="none": folder / f"shapes_{preprocess}.keras"


@pytest.fixture(scope="session")
def marks_model(pytestconfig) -> Path:
    """The shapes architecture trained on MARKS (tests/synthetic.py), half its images perturbed as evaluate does."""
    return pytestconfig.trainer.get("marks") / "marks.keras"


@pytest.fixture(scope="session")
def multilabel_model(pytestconfig) -> Path:
    """One sigmoid per shape, trained on images holding several SHAPES at once (tests/synthetic.py)."""
    return pytestconfig.trainer.get("multilabel") / "multilabel.keras"


@pytest.fixture(scope="session")
def segmenter_model(pytestconfig) -> Path:
    """A small U-Net scoring each pixel as background or one of SHAPES (tests/synthetic.py)."""
    return pytestconfig.trainer.get("segmenter") / "segmenter.keras"


@pytest.fixture(scope="session")
def detector_model(pytestconfig) -> Path:
    """A one-stage detector of colour blobs, two or three to an image (tests/synthetic_detector.py): outputs boxes
    (b, 256, 4) in pixels and sigmoid scores (b, 256, 3) before non-maximum suppression."""
    return pytestconfig.trainer.get("detector") / "detector.keras"


@pytest.fixture(scope="session")
def shapes_labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes_labels") / "shapes.txt"
    path.write_text("\n".join(SHAPES) + "\n")
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
