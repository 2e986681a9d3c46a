"""`explain segment` (one class per image, files written) against plain inference of the same segmentation model on
the same photos, whole processes, interleaved rounds; one Markdown table.

    .venv/bin/python benchmarks/bench_segment.py [--images 64] [--rounds 3] [--size 256]

The model is keras-hub's DeepLabV3 on a ResNet backbone (random weights, saved to a file); the photos are made from
sample_images at 300 to 2000 px (bench.py's). The yardstick decodes, resizes and runs the model's own compiled
forward pass in batches, writing nothing; explain segment writes each image's segmentation, the overlay of its
largest class and their manifest lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import explain_cmd, make_images, ratio, rounds  # noqa: E402

PLAIN = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from PIL import Image, ImageOps
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, keras_hub, tensorflow as tf
model = keras.models.load_model(sys.argv[1], compile=False)
size = model.input.shape[1]
forward = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                      input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
def load(path):
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
paths = sorted(Path(sys.argv[2]).glob("*.jpg"))
with ThreadPoolExecutor(max_workers=4) as pool:
    for start in range(0, len(paths), 32):
        forward(np.stack(list(pool.map(load, paths[start:start + 32])))).numpy()
"""


def make_model(path: Path, size: int) -> None:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(size, size, 3))
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet, low_level_feature_key="P2", spatial_pyramid_pooling_key="P4", dilation_rates=[6, 12, 18],
        upsampling_size=4, image_shape=(size, size, 3))
    keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=21).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    workdir = Path(tempfile.gettempdir()) / "explain-bench-segment"
    workdir.mkdir(exist_ok=True)
    model = workdir / f"deeplab_{args.size}.keras"
    if not model.exists():
        make_model(model, args.size)
    images = make_images(workdir, args.images)
    out = workdir / "out"
    commands = {
        "plain inference": [sys.executable, "-c", PLAIN, str(model), str(images)],
        "explain segment --top-k 1": explain_cmd("segment", str(images), "--model", str(model), "--top-k", "1",
                                                 "-o", str(out)),
        "explain segment --top-k 1 --precision fp32": explain_cmd("segment", str(images), "--model", str(model),
                                                                  "--top-k", "1", "-o", str(out / "fp32"),
                                                                  "--precision", "fp32"),
    }
    times, _ = rounds(commands, args.rounds)
    print(f"\n| DeepLabV3 (ResNet-18-sized encoder, {args.size} px, 21 classes), {args.images} photos, "
          f"medians of {args.rounds} interleaved rounds | seconds | ÷ plain |\n| --- | --- | --- |")
    for name in commands:
        print(f"| {name} | {statistics.median(times[name]):.1f} | {ratio(times, name, 'plain inference'):.2f}x |")


if __name__ == "__main__":
    main()
