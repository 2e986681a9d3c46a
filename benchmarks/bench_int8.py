"""--precision int8 against fp32: fidelity (top-1 agreement, Grad-CAM maps' Pearson r, evaluate's AUCs) and speed.

    .venv/bin/python benchmarks/bench_int8.py MODEL IMAGES [--weights W] [--methods gradcam,scorecam] [--evaluate 16]

MODEL is a model file or a built-in name (with --weights); IMAGES a folder. int8 is calibrated on a seeded sample of
64 of the folder's images, as the command line does. Run it once natively and once with ONEDNN_MAX_CPU_ISA=AVX2
OV_CPU_MAX_ISA=AVX2. The tests' trained models (tests/trained.py) are made by a test run in a temporary folder
(trained-*/), and tests/synthetic.py draws images of their kind (make_shape, make_scene); a random-weight ResNet50
(benchmarks/bench.py's) gives maps and speed only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images", type=Path)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--methods", default="gradcam,scorecam")
    parser.add_argument("--evaluate", type=int, default=16, help="images evaluated at each precision (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("EXPLAIN_CACHE", str(Path(tempfile.gettempdir()) / "explain-bench-int8"))
    from explain_cli import Explainer
    from explain_cli.model.quantizing import sample

    paths = sorted(str(p) for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    calibration = tuple(sample(paths, 0))
    methods = args.methods.split(",")

    def made(precision: str, method: str = "gradcam") -> Explainer:
        return Explainer(args.model, weights=args.weights, precision=precision, method=method,
                         calibration=calibration if precision == "int8" else None)

    both = {precision: made(precision) for precision in ("fp32", "int8")}
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"{args.model}: {len(paths)} images, ISA {isa}\n\n| measure | value |\n| --- | --- |")
    top = {p: np.array([r.probabilities.argmax() for r in e.predict(paths, top=1)]) for p, e in both.items()}
    print(f"| top-1 agreement, int8 with fp32 | {np.mean(top['fp32'] == top['int8']):.3f} |", flush=True)
    classes = dict(zip(paths, top["fp32"].tolist()))  # both precisions explain the fp32 top class
    for method in methods:
        maps = {p: [x.map for x in (both[p] if method == "gradcam" else made(p, method)).explain(paths, classes)]
                for p in both}
        r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps["fp32"], maps["int8"]) if a.std() and b.std()]
        print(f"| {method}: maps' Pearson r, median / 5th percentile / least | {np.median(r):.4f} / "
              f"{np.percentile(r, 5):.4f} / {min(r):.4f} |", flush=True)
    if args.evaluate:
        few = paths[: args.evaluate]
        auc = {p: e.evaluate(few, ("gradcam",)).summary("gradcam").means for p, e in both.items()}
        for measure in ("deletion_auc", "insertion_auc"):
            print(f"| evaluate, gradcam {measure}: fp32 / int8 | {auc['fp32'][measure]:.4f} / "
                  f"{auc['int8'][measure]:.4f} |", flush=True)
    times: dict[str, list[float]] = {p: [] for p in both}
    for e in both.values():
        e.explain(paths[:32])  # compiled and warm
    for _ in range(args.repeats):
        for p, e in both.items():
            start = time.perf_counter()
            e.explain(paths)
            times[p].append(time.perf_counter() - start)
    per = {p: 1000 * statistics.median(t) / len(paths) for p, t in times.items()}
    print(f"| Grad-CAM through the Python API, ms per image: fp32 / int8 | {per['fp32']:.1f} / {per['int8']:.1f} "
          f"({per['fp32'] / per['int8']:.2f}×) |")


if __name__ == "__main__":
    main()
