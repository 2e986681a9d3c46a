"""D-RISE on a YOLO-style ONNX detector: `Detector(file, method="drise")` end to end against the same number of forward
passes alone, side by side in one process; one Markdown table.

    .venv/bin/python benchmarks/bench_detector_files.py [--size 320] [--masks 500] [--images 2] [--rounds 3]

The detector is a MobileNetV2 backbone (random weights, seeded) with a one-level YOLOv8-style head, exported by Keras to
ONNX: one output (1, 4 + 80, A), boxes as centres in input pixels and 80 sigmoid scores, no objectness. "Forward passes
alone" is what D-RISE cannot do without: the ONNX Runtime session run on `masks` masked copies of each image in batches
of 32, nothing else. D-RISE adds drawing the masks, masking, decoding the outputs and each mask's similarity to every
detection (tasks/detection_files.py, numpy), and the suppression of the image's own detections.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLASSES = 80


def make_model(path: Path, size: int) -> None:
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    features = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)(x)
    features = layers.Conv2D(128, 3, padding="same", activation="relu")(features)
    grid = features.shape[1]
    scores = layers.Conv2D(CLASSES, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(-2.0))(
        features)
    sizes = layers.Conv2D(2, 1, activation="softplus")(features) * (size / grid) * 2
    ones = ops.ones_like(features[..., :1])
    centres = ops.concatenate([(ops.cumsum(ones, axis=2) - 0.5) * size / grid,
                               (ops.cumsum(ones, axis=1) - 0.5) * size / grid], axis=-1)
    flat = layers.Reshape((-1, 4 + CLASSES))(ops.concatenate([centres, sizes, scores], axis=-1))
    model = keras.Model(inputs, ops.transpose(flat, (0, 2, 1)))
    model(np.zeros((1, size, size, 3), np.float32))
    model.export(str(path), format="onnx", verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--masks", type=int, default=500)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    from explain_cli import Detector
    from explain_cli.methods.perturbation import rise_masks
    from explain_cli.model import files

    folder = Path(tempfile.mkdtemp(prefix="bench-detector-files-"))
    path = folder / "yolo.onnx"
    make_model(path, arguments.size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (arguments.images, arguments.size, arguments.size, 3), dtype=np.uint8)
    made = Detector(path, method="drise", masks=arguments.masks, cells=16, min_score=0.05, max_boxes=5)
    opened = files.open_file(str(path), files.Runtime())
    masks = rise_masks(arguments.masks, 16, 0.5, 0, arguments.size, arguments.size)
    boxes = sum(len(p.predictions) for p in made.predict(images))

    def forward_alone() -> None:
        for image in images:
            for start in range(0, arguments.masks, 32):
                chunk = masks.chunk(start, min(start + 32, arguments.masks))
                opened.feed(128.0 + (image.astype(np.float32) - 128.0) * chunk[..., None])

    made.explain(images)  # warm: the session's first runs
    forward_alone()
    timed: dict[str, list[float]] = {"forward passes alone": [], "D-RISE end to end": []}
    for _ in range(arguments.rounds):  # interleaved: the machine is shared and noisy
        for name, work in (("forward passes alone", forward_alone), ("D-RISE end to end", lambda: made.explain(images))):
            started = time.perf_counter()
            work()
            timed[name].append(time.perf_counter() - started)
    alone = statistics.median(timed["forward passes alone"])
    print(f"D-RISE on a YOLOv8-style ONNX detector (MobileNetV2, {arguments.size} px, {made.format.predictions} "
          f"predictions), {arguments.images} images, {boxes} detections, {arguments.masks} masks, medians of "
          f"{arguments.rounds}\n")
    print("| | s per image | × forward passes alone |")
    print("| --- | --- | --- |")
    for name, runs in timed.items():
        median = statistics.median(runs)
        print(f"| {name} | {median / arguments.images:.3f} | {median / alone:.2f} |")


if __name__ == "__main__":
    main()
