"""The compiled explain step as Keras runs the model (fp32, BatchNorm unfolded), with BatchNorm folded, and folded
in bfloat16, interleaved, per image; then whole runs against plain fp32 inference.

    .venv/bin/python benchmarks/bench_precision.py [--model resnet50] [--rounds 5] [--whole 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_weights import random_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--whole", type=int, default=2, help="rounds of whole runs (ResNet50 only; 0: none)")
    args = parser.parse_args()
    from explain_cli.steps import compiled as explainer
    from explain_cli.model import loading as models
    from explain_cli.model import cut as split
    from explain_cli.model.backend import load_tensorflow

    _, keras = load_tensorflow()
    keras.utils.set_random_seed(0)
    weights = random_weights(keras, models.BUILT_IN[args.model].constructor)
    model = models.load(args.model, str(weights))
    graph = explainer.graph_of(model)
    layer = explainer.default_layer(graph, model)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, model.height, model.width, 3), np.uint8)
    bf16 = models.load(args.model, str(weights), precision="bf16")
    variants = {
        "fp32, BatchNorm as Keras runs it": (model, graph, False),
        "fp32, BatchNorm folded": (model, graph, True),
        "bf16, BatchNorm folded": (bf16, explainer.graph_of(bf16), True),
    }
    steps = {name: explainer.compile_explain(m, split.split(g, layer, fold=fold), "gradcam")
             for name, (m, g, fold) in variants.items()}
    for step in steps.values():
        step(images)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(images)
            times[name].append((time.perf_counter() - start) / args.batch_size)
    first = statistics.median(times[next(iter(times))])
    print(f"| {args.model}: the compiled gradcam step, batch {args.batch_size}, medians of {args.rounds} "
          "interleaved rounds | per image |\n| --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} ms ({statistics.median(values) / first:.2f}x) |")
    if args.whole and args.model == "resnet50":
        whole_runs(args.whole)


def whole_runs(runs: int) -> None:
    """256 photos: plain fp32 inference (benchmarks/baseline_predict.py) against explain gradcam, auto and fp32."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    from bench import make_images, make_weights, rounds

    work = Path(tempfile.gettempdir()) / "explain-bench"
    work.mkdir(exist_ok=True)
    weights, folder = make_weights(work), make_images(work, 256)
    explain = [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", "resnet50", "--weights",
               str(weights), "-o", tempfile.mkdtemp(prefix="explain-bench-precision-")]
    baseline = [sys.executable, str(Path(__file__).parent / "baseline_predict.py"), str(weights), str(folder)]
    commands = {
        "plain fp32 inference (baseline_predict.py)": baseline,
        "explain gradcam (auto: bf16 here)": explain,
        "explain gradcam --precision fp32 (folding alone)": explain + ["--precision", "fp32"],
    }
    times, _ = rounds(commands, runs)
    base = statistics.median(times[next(iter(times))])
    print(f"\n| 256 photos, whole processes, medians of {runs} interleaved rounds | time | throughput vs baseline |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} s | {base / statistics.median(values):.2f}x |")


if __name__ == "__main__":
    main()
