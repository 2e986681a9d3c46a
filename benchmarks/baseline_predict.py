"""Plain inference, the yardstick for `explain`: decode, resize, batched compiled forward pass, write nothing.

    python benchmarks/baseline_predict.py WEIGHTS FOLDER [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        return np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    model = keras.applications.ResNet50(weights=None)
    model.load_weights(args.weights)
    forward = tf.function(
        lambda x: model(keras.applications.resnet50.preprocess_input(tf.cast(x, tf.float32)), training=False),
        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)],
    )
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(paths), args.batch_size):
            batch = np.stack(list(pool.map(load, paths[start : start + args.batch_size])))
            forward(batch).numpy()


if __name__ == "__main__":
    main()
