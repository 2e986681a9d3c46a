"""The same job with tf-keras-vis' Gradcam, for comparison (run in its own environment, see bench.py).

    PEER_PYTHON benchmarks/peer_tf_keras_vis.py WEIGHTS FOLDER OUT [--batch-size 32]

Decode, predict the top-1 class, Grad-CAM it at conv5_block3_out (tf-keras-vis, softmax replaced by
linear as its docs recommend), upsample to the photo, jet overlay, write a JPEG: batched, as a user
of that library would write it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras
    from matplotlib import colormaps
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = keras.applications.ResNet50(weights=None)
    model.load_weights(args.weights)
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    jet = colormaps["jet"]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        originals = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in batch]
        x = np.stack([np.asarray(o.resize((224, 224), Image.Resampling.BILINEAR), np.float32) for o in originals])
        x = keras.applications.resnet50.preprocess_input(x)
        classes = model.predict(x, verbose=0).argmax(axis=1)
        cams = gradcam(CategoricalScore(list(classes)), x, penultimate_layer="conv5_block3_out")
        for path, original, cam in zip(batch, originals, cams):
            heat = Image.fromarray(np.uint8(cam * 255)).resize(original.size, Image.Resampling.BILINEAR)
            colored = Image.fromarray(np.uint8(jet(np.asarray(heat) / 255.0)[..., :3] * 255))
            Image.blend(original, colored, 0.4).save(args.out / f"{path.stem}.jpg", quality=90)


if __name__ == "__main__":
    main()
