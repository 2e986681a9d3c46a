"""What a likeness target and held inputs cost, side by side in one process: Grad-CAM on a MobileNetV2 (random
weights, 224 × 224) explaining its top class, its embedding's likeness to a reference, and the same network with a
vector input held beside the picture (with its gradient × input), plus plain compiled inference, ms per image.

    python benchmarks/bench_targets.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import rounds_here  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from explain_cli import Explainer

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                              input_shape=(224, 224, 3))
    image = keras.Input((224, 224, 3), name="image")
    features = backbone(keras.layers.Rescaling(1 / 127.5, -1.0)(image))
    classifier = keras.Model(image, keras.layers.Dense(10, activation="softmax")(features))
    embedder = keras.Model(image, keras.layers.Dense(128)(features))
    meta = keras.Input((16,), name="meta")
    joined = keras.layers.Concatenate()([features, keras.layers.Dense(32, activation="relu")(meta)])
    two = keras.Model([image, meta], keras.layers.Dense(10, activation="softmax")(joined))

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (args.images, 224, 224, 3), dtype=np.uint8)
    metas = rng.normal(size=(args.images, 16)).astype(np.float32)
    reference = rng.normal(size=128).astype(np.float32)
    settings = dict(precision="fp32", runtime="tensorflow", batch_size=32)
    runs = {
        "plain inference (classifier)": lambda: classifier.predict(images.astype(np.float32), batch_size=32,
                                                                   verbose=0),
        "gradcam, top class": (lambda made: lambda: made.explain(images))(Explainer(classifier, **settings)),
        "gradcam, likeness": (lambda made: lambda: made.explain(images, similar_to=reference))(
            Explainer(embedder, **settings)),
        "gradcam, picture + vector held": (lambda made: lambda: made.explain({"image": images, "meta": metas}))(
            Explainer(two, **settings)),
    }
    times = rounds_here(runs, args.repeats)  # interleaved: the machine is shared and noisy
    print(f"tensorflow {tf.__version__}, {args.images} images, median of {args.repeats}")
    for name, measured in times.items():
        print(f"  {name:<34} {1000 * np.median(measured) / args.images:7.1f} ms per image")


if __name__ == "__main__":
    main()
