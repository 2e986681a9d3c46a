"""`explain detect` on keras-hub's RetinaNet (ResNet50 FPN, levels 3 to 7, 80 classes, random weights) at 512 px:
one inference pass, Grad-CAM for every box of an image, and D-RISE, measured side by side in one process; one
Markdown table.

    .venv/bin/python benchmarks/bench_detect.py [--images 8] [--rounds 3] [--boxes 5] [--masks 1000]

Inference is the detector's own forward pass, decoding and suppression (keras-hub's decode_predictions), compiled, on
a batch of photos at 512 px. Grad-CAM is the Detector's compute step for a batch, every box of every image explained:
the feature pass, the predictions and their suppression, each box's class head on the window of its level its
predictions see and the pyramid's backward pass batched over the image's boxes (tasks/detection_levels.py); beside
it, the same without that pruning (each image's whole head once, one backward pass batched over its boxes), and the
rows tiled (each box's head run on its own copy of the features). With random
weights every anchor scores about as high as any other, so --boxes caps the detections per image as a trained model's
score threshold would; the cost per box is the part that grows with them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_model(path: Path, size: int) -> None:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=False,
                                                  image_shape=(size, size, 3))
    converter = keras_hub.layers.RetinaNetImageConverter(image_size=(size, size), scale=1 / 255.0)
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=80, bounding_box_format="yxyx",
        preprocessor=keras_hub.models.RetinaNetObjectDetectorPreprocessor(image_converter=converter))
    kernel, bias = detector.box_head.weights[-2:]  # boxes near their anchors, not the slivers of the prior's bias
    kernel.assign(kernel.numpy() * 0.05)
    bias.assign(np.zeros(bias.shape))
    detector.save(path)


def photos(count: int, size: int) -> np.ndarray:
    from PIL import Image

    folder = Path(__file__).resolve().parent.parent / "sample_images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    picked = [files[i % len(files)] for i in range(count)]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in picked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=5)
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--model", type=Path, default=Path("/tmp/explain-bench-retinanet.keras"))
    args = parser.parse_args()
    if not args.model.is_file():
        make_model(args.model, args.size)
    import keras

    from explain_cli import Detector
    from explain_cli.inputs.sources import Source

    batch = photos(args.images, args.size)
    model = keras.models.load_model(args.model, compile=False)
    gradcam = Detector(args.model, max_boxes=args.boxes, min_score=0.0, batch_size=args.images,
                       precision=args.precision)
    drise = Detector(args.model, method="drise", masks=args.masks, max_boxes=args.boxes, min_score=0.0,
                     batch_size=32, precision=args.precision)
    tiled = Detector(args.model, max_boxes=args.boxes, min_score=0.0, batch_size=args.images,
                     precision=args.precision)
    tiled._steps.explain("gradcam").vectorised = False  # the way a head pfor cannot vectorise is explained
    tiled._steps.explain("gradcam").pruned = None
    whole = Detector(args.model, max_boxes=args.boxes, min_score=0.0, batch_size=args.images,
                     precision=args.precision)
    whole._steps.explain("gradcam").pruned = None  # the way a head that cannot be cropped is explained
    sources = [Source(Path(f"{i}.jpg"), str(i), Path(str(i))) for i in range(len(batch))]  # type: ignore[arg-type]
    compute = gradcam.compute()
    compute_tiled = tiled.compute()
    compute_whole = whole.compute()
    found = gradcam.compute(explain=False)

    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([len(batch), args.size, args.size, 3], tf.uint8)])
    def forward(images: tf.Tensor) -> dict:
        pixels = tf.cast(images, tf.float32)
        return model.decode_predictions(model(model.preprocessor.image_converter(pixels), training=False), pixels)

    def infer() -> None:
        {k: v.numpy() for k, v in forward(batch).items()}

    def explain() -> None:
        compute(batch, sources)

    def explain_whole() -> None:
        compute_whole(batch, sources)

    def explain_tiled() -> None:
        compute_tiled(batch, sources)

    def detect_only() -> None:
        found(batch, sources)

    for warm in (infer, explain, explain_whole, explain_tiled, detect_only):
        warm()
    times: dict[str, list[float]] = {"inference": [], "explain": [], "whole": [], "tiled": [], "detect": []}
    for _ in range(args.rounds):
        for name, run in (("inference", infer), ("explain", explain), ("whole", explain_whole),
                          ("tiled", explain_tiled), ("detect", detect_only)):
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / len(batch))
    one = drise.compute()
    one(batch[:1], sources[:1])
    start = time.perf_counter()
    one(batch[:1], sources[:1])
    drise_time = time.perf_counter() - start
    inference, explained, unpruned, by_rows, detected = (statistics.median(times[k])
                                                         for k in ("inference", "explain", "whole", "tiled", "detect"))
    per_box, per_row = (explained - detected) / args.boxes, (by_rows - detected) / args.boxes
    per_whole = (unpruned - detected) / args.boxes
    print(f"RetinaNet ResNet50-FPN at {args.size} px, {gradcam.format.predictions} anchors, precision "
          f"{gradcam.precision}, {args.images} images a batch, medians of {args.rounds} rounds\n")
    print("| step | ms per image | × inference |\n| --- | --- | --- |")
    print(f"| inference (forward pass, keras-hub's decoding and NMS, compiled) | {1000 * inference:.0f} | 1.00 |")
    print(f"| explain's detections alone (feature pass kept for the maps) | {1000 * detected:.0f} | "
          f"{detected / inference:.2f} |")
    print(f"| Grad-CAM of {args.boxes} boxes an image | {1000 * explained:.0f} | {explained / inference:.2f} |")
    print(f"| ... each box | {1000 * per_box:.0f} | {per_box / inference:.2f} |")
    print(f"| Grad-CAM of {args.boxes} boxes, each image's whole head (not pruned) | {1000 * unpruned:.0f} | "
          f"{unpruned / inference:.2f} |")
    print(f"| ... each box | {1000 * per_whole:.0f} | {per_whole / inference:.2f} |")
    print(f"| Grad-CAM of {args.boxes} boxes, rows tiled (a head pfor cannot vectorise) | {1000 * by_rows:.0f} | "
          f"{by_rows / inference:.2f} |")
    print(f"| ... each box | {1000 * per_row:.0f} | {per_row / inference:.2f} |")
    print(f"| D-RISE, {args.masks} masks, {args.boxes} boxes | {1000 * drise_time:.0f} | {drise_time / inference:.1f} |")


if __name__ == "__main__":
    main()
