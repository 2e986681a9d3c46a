"""The default runtime against two plain inferences (fp32 Keras, and the fastest: OpenVINO compiled for throughput,
baseline_openvino.py), against TensorFlow alone, and --precision int8 (gradcam and evaluate).

    .venv/bin/python benchmarks/bench_runtime.py [--images 256] [--eval-images 32] [--runs 3] [--isa native,AVX2]

Whole processes, interleaved round by round (on a shared machine a slow minute slows one run of each, not all runs
of one), median of --runs. Every ISA setting is measured in turn: `AVX2` sets ONEDNN_MAX_CPU_ISA=AVX2 (TensorFlow's
and OpenVINO's oneDNN kernels) and OV_CPU_MAX_ISA=AVX2 (OpenVINO's own, where its build reads it), so a CPU with
AVX-512 and AMX computes as one without bfloat16, and `auto` picks fp32 as it would there. Converted passes are
cached in the work folder, converted once before the rounds (that first run is reported on its own).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import make_images, make_weights  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> str:
    """The CPU's model name and the flags that decide the runtime's kernels."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.+)", text)
    flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split()) if "flags" in text else set()
    return f"{name.group(1).strip() if name else 'unknown CPU'}, {os.cpu_count()} cores; flags: " + \
        " ".join(f for f in FLAGS if f in flags)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss // 1024


def explain(*args: str) -> list[str]:
    return [sys.executable, "-m", "explain_cli", *args]


def rounds(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(timed(command, env)[0])
    return times


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of one round's slow ÷ fast time: how many times faster `fast` ran."""
    return statistics.median(a / b for a, b in zip(times[slow], times[fast]))


STEP = """
import statistics, sys, time, numpy as np
from explain_cli.steps import compiled as explainer
from explain_cli.model import loading as models
from explain_cli.model import runtime as offload
from explain_cli.model import cut as split
results = []
for precision in sys.argv[2].split(","):
    model = models.load("resnet50", weights=sys.argv[1], precision=precision)
    for runtime in ("tensorflow", "openvino"):
        chosen = None if runtime == "tensorflow" else offload.Offload(runtime, precision, (224, 224, 3), model.identity)
        cut = split.split(explainer.graph_of(model, chosen), "conv5_block3_out")
        step = explainer.compile_explain(model, cut, "gradcam")
        x = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
        step(x)
        times = []
        for _ in range(5):
            start = time.perf_counter(); step(x); times.append(time.perf_counter() - start)
        results.append(f"{precision}-{runtime}={1000 * statistics.median(times) / 32:.1f}")
print(" ".join(results))
"""


def step_times(weights: str, env: dict[str, str], precisions: str) -> dict[str, float]:
    """ms per image of the compiled Grad-CAM step (feature pass, head, gradient, map) on a batch of 32, in one process:
    TensorFlow alone and OpenVINO's feature pass, at each precision."""
    done = subprocess.run([sys.executable, "-c", STEP, weights, precisions], capture_output=True, text=True, env=env,
                          check=True)
    return {k: float(v) for k, v in (item.split("=") for item in done.stdout.split())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--isa", default="native,AVX2", help="the ISA settings to measure, in turn")
    parser.add_argument("--memory", default="100,2000", help="two folder sizes whose peak RSS is compared ('' skips)")
    parser.add_argument("--steps-only", action="store_true", help="the compiled steps alone, no whole runs")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="`explain evaluate` alone: auto, TensorFlow and int8 on --eval-images photos")
    parser.add_argument("--peer-python", help="a Python with tensorflow and tf-keras-vis (target 3; bench.py's)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "explain-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = str(make_weights(args.workdir))
    folder = str(make_images(args.workdir, args.images))
    few = str(make_images(args.workdir, args.eval_images))
    out = str(args.workdir / "out")
    print(f"CPU: {cpu()}\nResNet50 (random weights), batch 32; median of {args.runs} interleaved rounds of whole "
          "processes\n")
    print("| ISA | measure | value |\n| --- | --- | --- |", flush=True)
    for isa in args.isa.split(","):
        env = {**os.environ, "EXPLAIN_CACHE": str(args.workdir / "cache")}
        if isa != "native":
            env.update(ONEDNN_MAX_CPU_ISA=isa, OV_CPU_MAX_ISA=isa)
        native = isa == "native" or isa.upper().startswith("AVX512_CORE_") or "AMX" in isa.upper()
        if args.evaluate_only:
            evaluate_only(few, weights, out, env, args.runs, args.eval_images, isa)
            continue
        steps = step_times(weights, env, "fp32,bf16" if native else "fp32")
        for name, ms in steps.items():
            precision, runtime = name.split("-")
            print(f"| {isa} | Grad-CAM step, batch 32, {precision}, {runtime} | {ms:.1f} ms per image "
                  f"({steps[f'{precision}-tensorflow'] / ms:.2f}× TensorFlow {precision}) |", flush=True)
        if args.steps_only:
            continue
        gradcam = explain("gradcam", folder, "--weights", weights, "-o", out)
        evaluate = explain("evaluate", few, "--weights", weights, "--methods", "gradcam,random", "-o", out + "-eval")
        for cache in (args.workdir / "cache").glob("openvino-*"):  # the first run converts: measured on its own
            shutil.rmtree(cache)
        first = timed(explain("gradcam", few, "--weights", weights, "-o", out), env)[0]
        again = timed(explain("gradcam", few, "--weights", weights, "-o", out), env)[0]
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "baseline_openvino.py"), weights, "--convert"],
                       check=True, env=env, capture_output=True)  # the IR a user keeps: converted before the rounds
        for command in ([*gradcam, "--precision", "int8"], [*evaluate, "--precision", "int8"]):
            timed(command, env)  # int8's calibration, once, as the cache keeps it
        commands = {
            "baseline": [sys.executable, str(ROOT / "benchmarks" / "baseline_predict.py"), weights, folder],
            "openvino baseline": [sys.executable, str(ROOT / "benchmarks" / "baseline_openvino.py"), weights, folder],
            "auto": gradcam,
            "int8": [*gradcam, "--precision", "int8"],
            "tensorflow": [*gradcam, "--runtime", "tensorflow"],
            "evaluate auto": evaluate,
            "evaluate tensorflow": [*evaluate, "--runtime", "tensorflow"],
            "evaluate int8": [*evaluate, "--precision", "int8"],
        }
        if args.peer_python:
            commands["peer"] = [args.peer_python, str(ROOT / "benchmarks" / "peer_tf_keras_vis.py"), weights, folder,
                                str(args.workdir / "peer-out")]
        times = rounds(commands, env, args.runs)
        n, m = args.images, args.eval_images
        rows = [
            (f"`explain gradcam`, {m} images: first run (converts) / second run (cache)", f"{first:.1f} s / {again:.1f} s"),
            (f"plain fp32 Keras inference, {n} images", f"{statistics.median(times['baseline']):.1f} s"),
            (f"`explain gradcam`, {n} images, default runtime (auto)", f"{statistics.median(times['auto']):.1f} s"),
            (f"`explain gradcam --runtime tensorflow` (before this issue), {n} images",
             f"{statistics.median(times['tensorflow']):.1f} s"),
            (f"fastest plain inference (OpenVINO, throughput, batches of 32), {n} images",
             f"{statistics.median(times['openvino baseline']):.1f} s"),
            ("`explain gradcam` auto's time ÷ the fastest plain inference's (goal ≤ 1.15)",
             f"{ratio(times, 'auto', 'openvino baseline'):.2f}×"),
            (f"`explain gradcam --precision int8`, {n} images: time, and ÷ the fastest plain inference's",
             f"{statistics.median(times['int8']):.1f} s ({ratio(times, 'int8', 'openvino baseline'):.2f}×)"),
            ("target 1: auto's images/s ÷ plain inference's (≥ 1.3 without bf16)",
             f"{ratio(times, 'baseline', 'auto'):.2f}× (rounds: "
             + ", ".join(f"{b / a:.2f}" for a, b in zip(times["auto"], times["baseline"])) + ")"),
            ("auto ÷ --runtime tensorflow (no slower where bf16 is native)", f"{ratio(times, 'tensorflow', 'auto'):.2f}×"),
            (f"`explain evaluate` gradcam + random, {m} images: auto / tensorflow",
             f"{statistics.median(times['evaluate auto']):.1f} s / {statistics.median(times['evaluate tensorflow']):.1f} s"),
            ("target 2: evaluate's throughput, auto ÷ tensorflow (≥ 1.4 without bf16)",
             f"{ratio(times, 'evaluate tensorflow', 'evaluate auto'):.2f}×"),
            ("evaluate's throughput, --precision int8 ÷ tensorflow",
             f"{ratio(times, 'evaluate tensorflow', 'evaluate int8'):.2f}× "
             f"({statistics.median(times['evaluate int8']):.1f} s)"),
        ]
        if args.peer_python:
            rows.append(("target 3: tf-keras-vis Gradcam's time ÷ auto's, same job (≥ 5)",
                         f"{ratio(times, 'peer', 'auto'):.2f}× ({statistics.median(times['peer']):.1f} s)"))
        for measure, value in rows:
            print(f"| {isa} | {measure} | {value} |", flush=True)
        if args.memory and isa == "native":
            small, large = (int(v) for v in args.memory.split(","))
            peaks = []
            for count in (small, large):
                images = str(make_images(args.workdir, count))
                peaks.append(timed(explain("gradcam", images, "--weights", weights, "-o", out + "-mem"), env)[1])
            print(f"| {isa} | peak RSS, auto: {small} images / {large} images | {peaks[0]} MiB / {peaks[1]} MiB "
                  f"({peaks[1] / peaks[0] - 1:+.1%}) |", flush=True)


def evaluate_only(few: str, weights: str, out: str, env: dict, runs: int, count: int, isa: str) -> None:
    """`explain evaluate` (gradcam, random) on `count` photos: auto and int8 against TensorFlow alone."""
    evaluate = explain("evaluate", few, "--weights", weights, "--methods", "gradcam,random", "-o", out + "-eval")
    timed([*evaluate, "--precision", "int8"], env)  # conversion and calibration, once, as the cache keeps them
    times = rounds({"auto": evaluate, "tensorflow": [*evaluate, "--runtime", "tensorflow"],
                    "int8": [*evaluate, "--precision", "int8"]}, env, runs)
    print(f"| {isa} | `explain evaluate` gradcam + random, {count} images: auto / tensorflow / int8 | "
          + " / ".join(f"{statistics.median(times[k]):.1f} s" for k in ("auto", "tensorflow", "int8")) + " |")
    print(f"| {isa} | evaluate's throughput ÷ tensorflow's (≥ 1.4 without bf16): auto / int8 | "
          f"{ratio(times, 'tensorflow', 'auto'):.2f}× / {ratio(times, 'tensorflow', 'int8'):.2f}× |", flush=True)


if __name__ == "__main__":
    main()
