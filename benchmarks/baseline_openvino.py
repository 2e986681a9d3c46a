"""The fastest plain inference a user could write here, the second yardstick for `explain`: the same decode and
resize as baseline_predict.py, the model converted once to OpenVINO (kept as IR beside the weights, as a user would
keep it) and compiled for throughput, batches of 32 in flight on an async queue while the next batch decodes;
nothing written. OpenVINO's own default precision (bf16 where the CPU computes it natively, else fp32).

    python benchmarks/baseline_openvino.py WEIGHTS FOLDER [--batch-size 32]
    python benchmarks/baseline_openvino.py WEIGHTS --convert        # the IR alone (before the timed rounds)
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from baseline_predict import load


def ir_of(weights: str) -> Path:
    """The IR beside the weights: converted once, outside the timed runs."""
    path = Path(weights).with_suffix(".openvino.xml")
    if path.exists():
        return path
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import openvino
    import tensorflow as tf

    model = keras.applications.ResNet50(weights=None)
    model.load_weights(weights)
    forward = tf.function(lambda x: model(keras.applications.resnet50.preprocess_input(tf.cast(x, tf.float32)),
                                          training=False))
    traced = forward.get_concrete_function(tf.TensorSpec([None, 224, 224, 3], tf.uint8))
    openvino.save_model(openvino.convert_model(traced), str(path), compress_to_fp16=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--convert", action="store_true")
    args = parser.parse_args()
    path = ir_of(args.weights)
    if args.convert:
        return
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    jobs = openvino.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    got: list[np.ndarray] = []
    jobs.set_callback(lambda request, _: got.append(request.get_output_tensor(0).data.argmax(-1)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(paths), args.batch_size):
            batch = np.stack(list(pool.map(load, paths[start : start + args.batch_size])))
            jobs.start_async({0: batch})
    jobs.wait_all()
    assert sum(len(g) for g in got) == len(paths)


if __name__ == "__main__":
    main()
