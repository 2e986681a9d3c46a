"""Where `explain gradcam`'s time goes: each stage of the data's path timed on its own, in one process.

    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 .venv/bin/python benchmarks/profile_gradcam.py WEIGHTS FOLDER

Start-up (imports, ResNet50 built and its weights read, BatchNorm folded, the step traced and its OpenVINO pass read
from the cache), then per image: decode, resize, the feature pass (OpenVINO), the head and its backward pass (the
compiled step less its feature pass), render (the overlay), encode (JPEG) and write. Each stage is timed alone
(decode, render and encode on one thread; the model's stages on both cores), so the shares are of the sum of the
stages; a real run overlaps decoding and rendering with the model in threads (bench_runtime.py times whole runs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

_STARTED = time.perf_counter()

import numpy as np  # noqa: E402


def main() -> None:
    weights, folder = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("EXPLAIN_CACHE", str(Path(tempfile.gettempdir()) / "explain-bench" / "cache"))
    from explain_cli.model.backend import load_tensorflow, quiet_process

    quiet_process()  # as the command line's own process
    tf, _ = load_tensorflow()
    from explain_cli.inputs import finding, sources
    from explain_cli.io import files
    from explain_cli.model import cut as split
    from explain_cli.model import loading as models
    from explain_cli.model import runtime as offload
    from explain_cli.render import heatmaps as render
    from explain_cli.steps import compiled as core
    from explain_cli.steps.precision import resolve

    imported = time.perf_counter()
    precision = resolve("auto", ["gradcam"])[0]
    model = models.load("resnet50", weights=weights, precision=precision)
    built = time.perf_counter()
    graph = core.graph_of(model, offload.choose("auto", model, lambda line, loud: None))
    cut = split.split(offload.ending_at(graph, "conv5_block3_out"), "conv5_block3_out")
    step = core.compile_explain(model, cut, "gradcam")
    found = finding.discover([str(folder)], sys.stdin)
    first = np.stack([sources.decode_for(s, sources.DEFAULT_MAX_PIXELS, 224, 224, 3)[1] for s in found[:32]])
    step(first)
    ready = time.perf_counter()
    stages = {name: 0.0 for name in ("decode", "resize", "feature pass", "head and backward", "render", "encode",
                                     "write")}
    out = Path(tempfile.mkdtemp(prefix="profile-"))
    features = tf.function(lambda x: cut.features(model.preprocess(tf.cast(x, tf.float32)))[0])
    for start in range(0, len(found), 32):
        batch = found[start:start + 32]
        pictures, inputs = [], []
        for source in batch:
            t = time.perf_counter()
            picture, image = sources._decoded(source, sources.DEFAULT_MAX_PIXELS)
            stages["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            inputs.append(sources.model_input(picture.rgb, 224, 224, 3, image))
            stages["resize"] += time.perf_counter() - t
            pictures.append(picture)
        x = np.stack(inputs)
        t = time.perf_counter()
        result = step(x)
        stages["feature pass"] += time.perf_counter() - t  # the whole step, less its head's share (below)
        for i, picture in enumerate(pictures):
            t = time.perf_counter()
            blended = render.overlay_on(render.backdrop(picture.rgb, 0.4), render.normalise(result.maps[i, 0]))
            stages["render"] += time.perf_counter() - t
            t = time.perf_counter()
            data = render.encode(blended, "jpg")
            stages["encode"] += time.perf_counter() - t
            t = time.perf_counter()
            files.write_atomic(out / f"{start + i}.jpg", data)
            stages["write"] += time.perf_counter() - t
    n = len(found)
    head = _head_share(step, features, first, cut)  # the step's time that is not its feature pass, as a share
    stages["head and backward"] = stages["feature pass"] * head
    stages["feature pass"] -= stages["head and backward"]
    startup = {"start-up: imports": imported - _STARTED, "start-up: build and weights": built - imported,
               "start-up: fold, trace, first batch": ready - built}
    total = sum(startup.values()) + sum(stages.values())
    print(f"{n} images, ISA {os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}, precision {precision}\n")
    print("| stage | seconds | ms per image | share |\n| --- | --- | --- | --- |")
    for name, seconds in {**startup, **stages}.items():
        per = f"{1000 * seconds / n:.1f}" if name in stages else "—"
        print(f"| {name} | {seconds:.2f} | {per} | {seconds / total:.1%} |")
    print(f"| sum | {total:.2f} | | |")


def _head_share(step, features, x, cut, rounds: int = 7) -> float:
    """The share of the compiled step's time in its head and backward pass: Grad-CAM's head, gradient and map on
    the batch's activations, timed in turn with the whole step on one batch, medians of `rounds`."""
    import statistics

    import tensorflow as tf

    a = tf.constant(features(x).numpy())

    @tf.function
    def head_and_backward(a: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(a)
            score = tf.reduce_max(cut.head(a, ()), axis=-1)
        gradient = tape.gradient(score, a)
        return tf.nn.relu(tf.reduce_sum(tf.reduce_mean(gradient, axis=(1, 2), keepdims=True) * a, -1))

    timed: dict[str, list[float]] = {"step": [], "head": []}
    for _ in range(rounds):
        for name, run in (("step", lambda: step(x)), ("head", lambda: head_and_backward(a).numpy())):
            t = time.perf_counter()
            run()
            timed[name].append(time.perf_counter() - t)
    return statistics.median(timed["head"]) / statistics.median(timed["step"])


if __name__ == "__main__":
    main()
