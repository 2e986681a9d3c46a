"""ResNet50 as an ONNX file (Keras' own export, run by ONNX Runtime) against the same Keras model, in one run:
`explain predict` and `explain evaluate` as whole processes, interleaved rounds; one Markdown table.

    .venv/bin/python benchmarks/bench_onnx.py [--images 64] [--evaluate-images 4] [--rounds 3]

Needs the onnx extra (pip install -e '.[onnx]'). The model has random weights (seeded), saved as a .keras file and
exported from it; the photos are bench.py's (300 to 2000 px, made from sample_images). evaluate measures occlusion
and random with 8 deletion / insertion steps, every pass a forward pass of the model file.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import explain_cmd, make_images, ratio, rounds  # noqa: E402

MAKE = """
import sys
from explain_cli.model.backend import load_tensorflow
tf, keras = load_tensorflow()
keras.utils.set_random_seed(0)
keras.applications.ResNet50(weights=None).save(sys.argv[1])
model = keras.models.load_model(sys.argv[1])
model(tf.zeros((1, 224, 224, 3)))  # Keras exports to ONNX only a model that has been called
model.export(sys.argv[2], format="onnx", verbose=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--evaluate-images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.gettempdir()) / "explain-bench-onnx"
    workdir.mkdir(exist_ok=True)
    keras_file, onnx_file = workdir / "resnet50.keras", workdir / "resnet50.onnx"
    if not onnx_file.exists():
        subprocess.run([sys.executable, "-c", MAKE, str(keras_file), str(onnx_file)], check=True)
    images = make_images(workdir, args.images)
    few = workdir / f"images_{args.evaluate_images}"
    few.mkdir(exist_ok=True)
    for photo in sorted(images.glob("*.jpg"))[: args.evaluate_images]:
        if not (few / photo.name).exists():
            (few / photo.name).symlink_to(photo)
    evaluate = ("--methods", "occlusion,random", "--steps", "8", "--preprocess", "caffe")
    commands = {
        "predict, Keras (auto: bf16 here)": explain_cmd("predict", str(images), "--model", str(keras_file),
                                                        "--preprocess", "caffe"),
        "predict, Keras fp32": explain_cmd("predict", str(images), "--model", str(keras_file), "--preprocess",
                                           "caffe", "--precision", "fp32"),
        "predict, ONNX Runtime": explain_cmd("predict", str(images), "--model", str(onnx_file), "--preprocess",
                                             "caffe"),
        "evaluate, Keras (auto)": explain_cmd("evaluate", str(few), "--model", str(keras_file), *evaluate, "-o",
                                              str(workdir / "out-keras")),
        "evaluate, Keras fp32": explain_cmd("evaluate", str(few), "--model", str(keras_file), *evaluate, "-o",
                                            str(workdir / "out-fp32"), "--precision", "fp32"),
        "evaluate, ONNX Runtime": explain_cmd("evaluate", str(few), "--model", str(onnx_file), *evaluate, "-o",
                                              str(workdir / "out-onnx")),
    }
    times, _ = rounds(commands, args.rounds)
    print(f"\n| ResNet50 (random weights), {args.images} photos to predict, {args.evaluate_images} to evaluate, "
          f"medians of {args.rounds} interleaved rounds | seconds | ÷ Keras (auto) |\n| --- | --- | --- |")
    for name in commands:
        base = "predict, Keras (auto: bf16 here)" if name.startswith("predict") else "evaluate, Keras (auto)"
        print(f"| {name} | {statistics.median(times[name]):.1f} | {ratio(times, name, base):.2f}x |")


if __name__ == "__main__":
    main()
