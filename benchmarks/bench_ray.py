"""--engine ray on one node against the plain run: Ray's overhead, whole processes, interleaved rounds.

    .venv/bin/python benchmarks/bench_ray.py [--images 256] [--runs 2]

The same random-weight ResNet50 and photos as bench.py; each round runs `explain gradcam` here and with
`--engine ray` (a local Ray started for the run, one worker), writing overlays into a fresh folder each time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import make_images, make_weights, rounds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "explain-bench"
    work.mkdir(exist_ok=True)
    weights, folder = make_weights(work), make_images(work, args.images)
    explain = [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", "resnet50", "--weights",
               str(weights)]
    outs = {name: Path(tempfile.mkdtemp(prefix=f"explain-bench-{name}-")) for name in ("here", "ray")}
    commands = {"here": explain + ["-o", str(outs["here"])],
                "ray": explain + ["-o", str(outs["ray"]), "--engine", "ray"]}
    times, _ = rounds(commands, args.runs)
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    here, ray = statistics.median(times["here"]), statistics.median(times["ray"])
    print(f"| measure ({args.images} photos, ResNet50, medians of {args.runs} interleaved rounds) | value |")
    print("| --- | --- |")
    print(f"| `explain gradcam`, here | {here:.1f} s ({args.images / here:.1f} images/s) |")
    print(f"| `explain gradcam --engine ray`, a local Ray, one worker | {ray:.1f} s ({args.images / ray:.1f} images/s) |")
    print(f"| Ray's overhead on one node | {ray - here:+.1f} s ({ray / here:.2f}x) |")


if __name__ == "__main__":
    main()
