"""`explain evaluate`'s cost against the forward passes it needs: prints one Markdown table.

    .venv/bin/python benchmarks/bench_evaluate.py [--images 4] [--steps 32] [--methods gradcam,random]

Target: evaluating M methods costs at most 1.3x the M x (2N + 3) forward passes per image and class that
deletion, insertion and Average Drop need, at the plain inference cost per image, plus the maps. All in
one process on a random-weight ResNet50: the forward pass is timed on full batches of float inputs, each
method's map on the same images, then the evaluation step itself (perturbations, forward passes, metrics);
each image's evaluation stands between two timings of the forward pass, and its ratio uses their mean, so a
slow minute on a shared machine touches both sides of the ratio.
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


def per_image(function, batch: np.ndarray, repeats: int = 3) -> float:
    """Median seconds per image of function(batch), after one warm-up call."""
    function(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(batch)
        times.append((time.perf_counter() - start) / len(batch))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--methods", default="gradcam,random")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from explain_cli.evaluation import evaluate
    from explain_cli.steps import compiled as explainer
    from explain_cli.model import loading as models
    from explain_cli.model import cut as split
    from explain_cli.model.backend import load_tensorflow
    from explain_cli.inputs.sources import Source

    _, keras = load_tensorflow()
    keras.utils.set_random_seed(0)
    weights = random_weights(keras, "ResNet50")
    model = models.load("resnet50", str(weights))
    graph = explainer.graph_of(model)
    cut = split.split(graph, model.default_layer)
    methods = tuple(args.methods.split(","))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    sources = [Source(Path(f"img{i}.jpg"), f"img{i}.jpg", Path(f"img{i}")) for i in range(args.images)]

    forward = explainer.compile_predict(model, graph, "float32")
    full_batch = rng.uniform(0, 255, (args.batch_size, 224, 224, 3)).astype(np.float32)
    for _ in range(3):  # warm-up: oneDNN settles on its kernels over the first calls
        forward(full_batch)
    steps = {m: explainer.compile_explain(model, cut, m, per_image=True) for m in methods if m != evaluate.RANDOM}
    classes = np.zeros(args.images, np.int32)
    maps = sum(per_image(lambda b, s=s: s(b, classes[: len(b)]), images) for s in steps.values())
    settings = evaluate.Settings(methods, args.steps, batch_size=args.batch_size)
    step = evaluate.evaluation_step(explainer.compile_predict(model, graph), forward, steps,
                                    lambda p, _: np.argsort(-p, axis=1)[:, :1], settings)
    step(images[:1], sources[:1])  # warm-up: traces
    passes = len(methods) * (2 * args.steps + 3)  # the target's count: every curve's ends for every map
    made = 2 + len(methods) * (2 * args.steps - 1)  # the ends once an image (the image's own scores are its predictions)
    forwards, measured, ratios = [], [], []
    for i in range(args.images):  # each image between two timings of the plain forward pass
        before = per_image(forward, full_batch, repeats=2)
        start = time.perf_counter()
        step(images[i : i + 1], sources[i : i + 1])
        measured.append(time.perf_counter() - start)
        after = per_image(forward, full_batch, repeats=2)
        forwards += [before, after]
        ratios.append(measured[-1] / (passes * (before + after) / 2 + maps))
    forward_cost = statistics.median(forwards)
    budget = passes * forward_cost + maps
    print(f"| measure (ResNet50, random weights, {args.images} images, N = {args.steps}, {', '.join(methods)}) "
          "| value |\n| --- | --- |")
    print(f"| plain forward pass per image, batch {args.batch_size} (median; range) "
          f"| {forward_cost * 1e3:.1f} ms ({min(forwards) * 1e3:.1f}-{max(forwards) * 1e3:.1f}) |")
    print(f"| forward passes needed per image: M x (2N + 3) | {passes} |")
    print(f"| forward passes made per image: 2 + M x (2N - 1) | {made} |")
    print(f"| maps per image (all methods) | {maps * 1e3:.0f} ms |")
    print(f"| needed: passes x forward + maps, per image | {budget:.2f} s |")
    print(f"| evaluate, measured per image (median) | {statistics.median(measured):.2f} s |")
    print(f"| measured / needed, median of per-image ratios (target <= 1.3) | **{statistics.median(ratios):.2f}x** |")


if __name__ == "__main__":
    main()
