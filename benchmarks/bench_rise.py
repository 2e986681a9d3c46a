"""RISE and occlusion on ResNet50 (random weights) through the library: images per second, against the plain forward
passes they need, in one process. Prints one Markdown table.

    .venv/bin/python benchmarks/bench_rise.py [--images 2] [--masks 4000]

RISE sends --masks masked copies of each image through the model; occlusion 170 at 224 px (a 32-px window every
16 px, and the image itself). The forward pass is timed on full batches of float inputs before and after, so a slow minute on a shared
machine touches both sides of the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from random_weights import random_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--masks", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from explain_cli import Explainer
    from explain_cli.model.backend import load_tensorflow
    from explain_cli.methods.perturbation import _starts

    _, keras = load_tensorflow()
    weights = random_weights(keras, "ResNet50")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    rows = []
    for method in ("rise", "occlusion"):
        explainer = Explainer("resnet50", weights=str(weights), method=method, masks=args.masks,
                              batch_size=args.batch_size)
        forward = explainer._forward()
        full = rng.uniform(0, 255, (args.batch_size, 224, 224, 3)).astype(np.float32)
        for _ in range(3):
            forward(full)
        explainer.explain(images[:1])  # warm-up: the predict step's trace
        passes = args.masks if method == "rise" else len(_starts(224, 32, 16)) ** 2 + 1  # the windows, the image
        per_image, needed = [], []
        for image in images:
            start = time.perf_counter()
            forward(full)
            before = (time.perf_counter() - start) / len(full)
            start = time.perf_counter()
            explainer.explain(image)
            per_image.append(time.perf_counter() - start)
            start = time.perf_counter()
            forward(full)
            after = (time.perf_counter() - start) / len(full)
            needed.append(passes * (before + after) / 2)
        took = statistics.median(per_image)
        rows.append((method, explainer.precision, passes, took, statistics.median(needed),
                     statistics.median(p / n for p, n in zip(per_image, needed))))
    print(f"| ResNet50, random weights, batch {args.batch_size} | precision | forward passes per image | seconds per "
          "image | images per second | the passes alone | ratio |\n| --- | --- | --- | --- | --- | --- | --- |")
    for method, precision, passes, took, needed, ratio in rows:
        print(f"| {method} | {precision} | {passes} | {took:.1f} | {1 / took:.3f} | {needed:.1f} s | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
