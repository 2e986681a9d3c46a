"""The Python API against the command line's compute step, and how long help takes; one Markdown table.

    .venv/bin/python benchmarks/bench_api.py [--rounds 5] [--batch-size 32]

1. `explain --help` and `explain --version`, whole processes, median of --rounds (issue 21's target: under 0.15 s).
2. ResNet50 (random weights from a file), images in memory (photo-sized, then at the model's size): the command
   line's compute step alone on the images decoded and batched, against `Explainer.explain` on the same images
   (the pipeline: resizing in threads while the step runs, and Explanation values out), per image, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_weights import random_weights  # noqa: E402


def process_seconds(arguments: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(arguments, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(explainer: Any, images: list[np.ndarray], args: argparse.Namespace) -> tuple[float, float]:
    """ms per image: the command line's compute step on the images decoded and batched, and explain() on them."""
    from explain_cli.inputs import sources as inputs

    sources = list(inputs.sources_of(images))
    batches = [(np.stack([inputs.model_input(image, 224, 224, 3) for image in images[i:i + args.batch_size]]),
                sources[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
    step = explainer.compute(explainer.choose())  # the command line's compute step, exactly
    explainer.explain(images[:2])  # trace
    timings: dict[str, list[float]] = {"step": [], "explain": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        for batch, batch_sources in batches:
            step(batch, batch_sources)
        timings["step"].append((time.perf_counter() - start) / len(images))
        start = time.perf_counter()
        explainer.explain(images)
        timings["explain"].append((time.perf_counter() - start) / len(images))
    return statistics.median(timings["step"]) * 1e3, statistics.median(timings["explain"]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches per explain() call")
    args = parser.parse_args()
    explain = [str(Path(sys.executable).with_name("explain"))]
    rows = [("`explain --help`", f"{process_seconds(explain + ['--help'], args.rounds):.3f} s"),
            ("`explain --version`", f"{process_seconds(explain + ['--version'], args.rounds):.3f} s")]

    from explain_cli import Explainer
    from explain_cli.model.backend import load_tensorflow

    _, keras = load_tensorflow()
    explainer = Explainer("resnet50", weights=str(random_weights(keras, "ResNet50")))
    rng = np.random.default_rng(0)
    for label, size in (("photos (640 × ~500)", None), ("images at the model's size (224 × 224)", 224)):
        images = [rng.integers(0, 256, (size or 480 + 16 * (i % 5), size or 640, 3), dtype=np.uint8)
                  for i in range(args.batches * args.batch_size)]
        step_ms, explain_ms = compare(explainer, images, args)
        rows += [(f"ResNet50 gradcam, the compiled step on decoded batches of {args.batch_size} ({explainer.precision})",
                  f"{step_ms:.1f} ms per image"),
                 (f"`Explainer.explain` on {len(images)} {label} in memory, values out",
                  f"{explain_ms:.1f} ms per image ({explain_ms / step_ms:.2f}x)")]
    print(f"\n| measure (medians of {args.rounds} interleaved rounds) | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
