"""Measure `explain` against plain inference on this machine; prints one Markdown table.

    .venv/bin/python benchmarks/bench.py [--images 256] [--runs 3] [--memory 100,2000]

Everything is built locally: a random-weight ResNet50 saved to a file, and photos made from
sample_images at sizes from 300 to 2000 px. Whole processes are timed (start-up included) and the
median of --runs is reported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
SIZES = (300, 2000, 640, 1200, 480, 1600, 800, 1024)


def make_weights(workdir: Path) -> Path:
    path = workdir / "resnet50.weights.h5"
    if not path.exists():
        code = (
            "import sys; from explain_cli.model.backend import load_tensorflow; tf, keras = load_tensorflow();"
            "keras.utils.set_random_seed(0); keras.applications.ResNet50(weights=None).save_weights(sys.argv[1])"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path


def make_images(workdir: Path, count: int) -> Path:
    from PIL import Image

    folder = workdir / f"images_{count}"
    if folder.exists() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    samples = sorted((ROOT / "sample_images").glob("*.[jp][pn]g"))
    originals = [Image.open(p).convert("RGB") for p in samples]
    for i in range(count):
        image = originals[i % len(originals)]
        scale = SIZES[i % len(SIZES)] / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image.resize(size, Image.Resampling.BILINEAR).save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def timed(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS (MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def rounds(commands: dict[str, list[str]], runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each command over `runs` rounds; every round runs each command once, in turn.

    Interleaving keeps a ratio's two sides under the same conditions: on a shared machine a slow
    minute then slows one run of each, not all runs of one.
    """
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            wall, seconds, _ = timed(command)
            times[name].append(wall)
            cpu[name].append(seconds)
    return times, cpu


def rounds_here(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """`rounds` for functions in this process: each run once untimed (its steps traced), then wall seconds of each over
    `repeats` interleaved rounds."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median over rounds of one round's numerator ÷ denominator."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def explain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "explain_cli", *args]


def breakdown(weights: Path, image: Path, out: Path) -> list[tuple[str, float]]:
    """Fixed costs of `explain gradcam one.jpg`, stage by stage, in a fresh process."""
    code = f"""
import time, numpy as np
t = [time.perf_counter()]
from explain_cli.model.backend import load_tensorflow; load_tensorflow(); t.append(time.perf_counter())
import keras; m = keras.applications.ResNet50(weights=None); t.append(time.perf_counter())
m.load_weights({str(weights)!r}); t.append(time.perf_counter())
from explain_cli.steps import compiled as explainer
from explain_cli.inputs import sources as inputs
from explain_cli.model import loading as models
from explain_cli.running import pipeline
from explain_cli.model import cut as split
from explain_cli.render import heatmaps as render
from explain_cli.io import files as output
from explain_cli.inputs.labels import imagenet
model = models.LoadedModel("resnet50", m, 224, 224, 3, keras.applications.resnet50.preprocess_input,
                           "conv5_block3_out", imagenet())
graph = explainer.graph_of(model); cut = split.split(graph, "conv5_block3_out")
step = explainer.compile_explain(model, cut, "gradcam")
source = inputs.discover([{str(image)!r}], None)[0]
rgb = inputs.decode(source).rgb; x = inputs.model_input(rgb, 224, 224, 3)[None]
step(x); t.append(time.perf_counter())
result = step(x); t.append(time.perf_counter())
from pathlib import Path
blend = render.overlay_on(render.backdrop(rgb, 0.4), render.normalise(result.maps[0, 0]))
output.write_atomic(Path({str(out)!r}) / "one.jpg", render.encode(blend, "jpg")); t.append(time.perf_counter())
print(" ".join(f"{{b - a:.3f}}" for a, b in zip(t, t[1:])))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    values = [float(v) for v in done.stdout.split()]
    names = ["import tensorflow + keras", "build ResNet50", "load weights (.weights.h5, no hash check)",
             "split + first trace + first call", "compute (second call, 1 image)", "render + write JPEG"]
    return list(zip(names, values))


class Rows(list):
    """Table rows, each printed as soon as it is measured (a long run shows its progress)."""

    def append(self, row: tuple[str, str]) -> None:
        super().append(row)
        print(f"| {row[0]} | {row[1]} |", flush=True)

    def __iadd__(self, rows: list[tuple[str, str]]) -> "Rows":
        for row in rows:
            self.append(row)
        return self


def compute_ratio(weights: Path, batch: int = 32, repeats: int = 5) -> tuple[float, float]:
    """Seconds per batch of the compiled explain step alone, top-1 and top-5 (median of `repeats`)."""
    code = f"""
import statistics, time, numpy as np
from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import cut as split
model = models.load("resnet50", weights={str(weights)!r})
cut = split.split(explainer.graph_of(model), "conv5_block3_out")
x = np.random.default_rng(0).integers(0, 256, ({batch}, 224, 224, 3), dtype=np.uint8)
for k in (1, 5):
    step = explainer.compile_explain(model, cut, "gradcam", top_k=k)
    step(x)
    times = []
    for _ in range({repeats}):
        start = time.perf_counter(); step(x); times.append(time.perf_counter() - start)
    print(statistics.median(times))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    one, five = (float(v) for v in done.stdout.split())
    return one, five


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", default="100,2000", help="two folder sizes whose peak RSS is compared")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "explain-bench")
    parser.add_argument("--peer-python", help="a Python with tensorflow and tf-keras-vis installed (target 2), e.g. "
                        "made by: python3 -m venv /tmp/peer && /tmp/peer/bin/pip install tensorflow tf-keras-vis "
                        "pillow matplotlib")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = make_weights(args.workdir)
    folder = make_images(args.workdir, args.images)
    out = args.workdir / "out"
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; ResNet50, batch 32, median of "
          f"{args.runs} interleaved rounds of whole-process runs\n")
    print("| measure | value |\n| --- | --- |", flush=True)
    rows = Rows()

    gradcam = explain_cmd("gradcam", str(folder), "--weights", str(weights), "-o", str(out))
    commands = {
        "baseline": [sys.executable, str(ROOT / "benchmarks" / "baseline_predict.py"), str(weights), str(folder)],
        "predict": explain_cmd("predict", str(folder), "--weights", str(weights)),
        "top1": gradcam,
        "fp32": [*gradcam, "--precision", "fp32"],
        "top5": [*gradcam, "--top-k", "5"],
    }
    if args.peer_python:
        commands["peer"] = [args.peer_python, str(ROOT / "benchmarks" / "peer_tf_keras_vis.py"), str(weights),
                            str(folder), str(args.workdir / "peer-out")]
    times, cpu = rounds(commands, args.runs)
    n = args.images
    baseline, predict, top1, top5 = (statistics.median(times[k]) for k in ("baseline", "predict", "top1", "top5"))
    rows += [
        (f"plain inference baseline, {n} images", f"{baseline:.1f} s ({n / baseline:.1f} images/s)"),
        (f"`explain predict`, {n} images", f"{predict:.1f} s ({n / predict:.1f} images/s)"),
        (f"`explain gradcam`, {n} images, top-1, overlays written (--precision auto)",
         f"{top1:.1f} s ({n / top1:.1f} images/s)"),
        ("target 2 (issue 12): gradcam images/s ÷ baseline images/s (≥ 1.3)", f"{ratio(times, 'baseline', 'top1'):.2f}×"),
        (f"`explain gradcam --precision fp32` (BatchNorm folding alone), {n} images",
         f"{statistics.median(times['fp32']):.1f} s ({ratio(times, 'baseline', 'fp32'):.2f}× the baseline's images/s)"),
        (f"`explain gradcam --top-k 5`, {n} images", f"{top5:.1f} s ({ratio(times, 'top5', 'top1'):.2f}× top-1; "
         "no longer a target)"),
    ]
    one, five = compute_ratio(weights)
    rows += [
        ("compiled explain step alone, batch 32: top-1 / top-5", f"{one:.2f} s / {five:.2f} s"),
        ("the model's share of top-5: top-5 step ÷ top-1 step", f"{five / one:.2f}×"),
    ]
    extra = statistics.median(high - low for high, low in zip(cpu["top5"], cpu["top1"]))
    cores = os.cpu_count() or 1
    rows += [
        ("CPU per extra overlay: whole runs' CPU, top-5 − top-1, ÷ 4 more overlays per image (model share included)",
         f"{extra:.1f} s ({1000 * extra / (4 * n):.1f} ms per extra overlay)"),
        (f"… that CPU shared over {cores} cores", f"{extra / cores:.1f} s"),
    ]
    if args.peer_python:
        peer = statistics.median(times["peer"])
        rows += [
            (f"tf-keras-vis Gradcam, same job, {n} images", f"{peer:.1f} s ({n / peer:.1f} images/s)"),
            ("target 3: tf-keras-vis time ÷ `explain gradcam` time (≥ 3)", f"{ratio(times, 'peer', 'top1'):.2f}×"),
        ]

    help_time = statistics.median(timed(explain_cmd("--help"))[0] for _ in range(5))
    rows.append(("target 3: `explain --help` (≤ 0.3 s)", f"{help_time:.2f} s"))
    one = folder / "img00000.jpg"
    for name, seconds in breakdown(weights, one, out):
        rows.append((f"one image: {name}", f"{seconds:.2f} s"))

    start = time.perf_counter()
    hashlib.sha256(weights.read_bytes()).hexdigest()
    rows.append((f"one image: Keras' re-hash of a cached {weights.stat().st_size >> 20} MB weights file "
                 "(skipped by explain)", f"{time.perf_counter() - start:.2f} s"))

    small, large = (int(v) for v in args.memory.split(","))
    folders = {count: make_images(args.workdir, count) for count in (small, large)}
    rss: dict[int, list[int]] = {small: [], large: []}
    for _ in range(args.runs):  # interleaved, like the timings
        for count, images in folders.items():
            rss[count].append(timed(explain_cmd("gradcam", str(images), "--weights", str(weights), "-o", str(out)))[2])
    peaks = {count: statistics.median(values) for count, values in rss.items()}
    for count in (small, large):
        rows.append((f"peak RSS, `explain gradcam` on {count} images (median of {args.runs})",
                     f"{peaks[count]:.0f} MiB"))
    rows.append((f"target 3: RSS {large} ÷ RSS {small} (≤ 1.10)", f"{peaks[large] / peaks[small]:.2f}×"))


if __name__ == "__main__":
    main()
