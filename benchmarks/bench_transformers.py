"""Transformers and cuts inside a layer's call: what they cost, per image, interleaved in one run.

    .venv/bin/python benchmarks/bench_transformers.py [--rounds 5] [--batch-size 16]

1. A ViT-S/16-sized keras-hub ViT (224 × 224, 12 blocks, 384 wide, 6 heads; random weights): plain inference
   (the model called in one tf.function), the gradcam step at the default layer (the input of the last block,
   cut inside keras-hub's ViTEncoder), at the last block's first norm (inside the block: its residual needs the
   block's input, which the head is given from the feature pass), and the attention-rollout step.
2. ResNet50 cut at conv5_block3_out by replaying its graph and by the same cut taken while the step runs (the way a
   sublayer of a subclassed layer is cut): how much the second way costs where both apply.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_weights import random_weights  # noqa: E402


def timed(steps: dict, images: np.ndarray, rounds: int) -> dict[str, float]:
    for step in steps.values():
        step(images)  # trace
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(images)
            times[name].append((time.perf_counter() - start) / len(images))
    return {name: statistics.median(values) for name, values in times.items()}


def table(title: str, medians: dict[str, float]) -> None:
    first = next(iter(medians.values()))
    print(f"\n| {title} | per image |\n| --- | --- |")
    for name, value in medians.items():
        print(f"| {name} | {value * 1e3:.1f} ms ({value / first:.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    import keras_hub

    from explain_cli.steps import compiled as explainer
    from explain_cli.model import loading as models
    from explain_cli.model import cut as split
    from explain_cli.model.backend import load_tensorflow

    tf, keras = load_tensorflow()
    keras.utils.set_random_seed(0)
    path = Path("/tmp/explain-bench-vit-s16.keras")
    if not path.exists():
        backbone = keras_hub.models.ViTBackbone(image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=6,
                                                hidden_dim=384, mlp_dim=1536)
        keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000).save(path)
    vit = models.load(str(path), preprocess="tf")
    graph = explainer.graph_of(vit)
    layer = explainer.default_layer(graph, vit)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, 224, 224, 3), np.uint8)
    net = vit.keras_model
    plain = tf.function(lambda x: net(vit.preprocess(tf.cast(x, tf.float32)), training=False))
    cut = split.split(graph, layer)
    table(f"ViT-S/16 (keras-hub, random weights), batch {args.batch_size}, layer {layer}", timed({
        "plain inference (the model in one tf.function)": plain,
        "gradcam step (predictions + map)": explainer.compile_explain(vit, cut, "gradcam"),
        "gradcam step at transformer_block_12/ln_1": explainer.compile_explain(
            vit, split.split(graph, "transformer_block_12/ln_1"), "gradcam"),
        "attention-rollout step": explainer.compile_explain(vit, cut, "attention-rollout"),
    }, images, args.rounds))

    weights = random_weights(keras, "ResNet50")
    resnet = models.load("resnet50", str(weights))
    graph = explainer.graph_of(resnet)
    table(f"ResNet50 gradcam step at conv5_block3_out, batch {args.batch_size}", timed({
        "cut by replaying the graph": explainer.compile_explain(resnet, split.split(graph, "conv5_block3_out"), "gradcam"),
        "cut while the step runs (as inside a subclassed layer)": explainer.compile_explain(
            resnet, split.split(graph, "conv5_block3_out", hook=True), "gradcam"),
    }, images, args.rounds))


if __name__ == "__main__":
    main()
