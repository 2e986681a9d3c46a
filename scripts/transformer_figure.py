"""The README's transformer picture: a small keras-hub ViT trained here on coloured squares, explained three ways.

    .venv/bin/python scripts/transformer_figure.py            # docs/transformers.png (a few minutes on a CPU)

The ViT (64 × 64 input, 8 × 8 patches, 4 blocks, 192 wide) learns the tests' task (tests/synthetic.py: the
colour of the square is the class) and explains scenes it never saw, so the right answer is visible. Panels:
Grad-CAM at the default layer (the input of the last block), Grad-CAM at the last block's output (blank: the
classifier reads only the class token there), and attention rollout.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explain_cli.steps import compiled as explainer  # noqa: E402
from explain_cli.inputs import sources as inputs
from explain_cli.model import loading as models
from explain_cli.render import heatmaps as render
from explain_cli.model import cut as split
from explain_cli.model.backend import load_tensorflow  # noqa: E402
from tests.synthetic import SHAPE_CLASSES, TINY_SIZE, make_scene  # noqa: E402


def train(keras, path: Path) -> float:
    import keras_hub

    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    scenes = [make_scene(rng) for _ in range(3000)]
    x = np.stack([s.image for s in scenes]).astype("float32") / 127.5 - 1
    y = np.array([s.label for s in scenes])
    backbone = keras_hub.models.ViTBackbone(image_shape=(TINY_SIZE, TINY_SIZE, 3), patch_size=8, num_layers=4,
                                            num_heads=3, hidden_dim=192, mlp_dim=384)
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=len(SHAPE_CLASSES))
    model.compile(optimizer=keras.optimizers.AdamW(5e-4), loss=keras.losses.SparseCategoricalCrossentropy(True),
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=12, batch_size=64, verbose=0, validation_split=0.1)
    model.save(path)
    return float(history.history["val_accuracy"][-1])


def main() -> None:
    _, keras = load_tensorflow()
    folder = Path(tempfile.mkdtemp())
    accuracy = train(keras, folder / "vit.keras")
    (folder / "labels.txt").write_text("\n".join(SHAPE_CLASSES))
    model = models.load(str(folder / "vit.keras"), labels_file=folder / "labels.txt", preprocess="tf")
    graph = explainer.graph_of(model)
    default = explainer.default_layer(graph, model)
    last = "vi_t_backbone/vit_encoder/transformer_block_4"
    panels = [("gradcam, default layer", default, "gradcam"), ("gradcam, after the last block", last, "gradcam"),
              ("attention-rollout", default, "attention-rollout")]
    originals = [make_scene(np.random.default_rng(seed), 192, 192).image for seed in (1, 2, 3)]
    batch = np.stack([inputs.model_input(o, model.width, model.height, 3) for o in originals])
    results = [explainer.compile_explain(model, split.split(graph, layer), method)(batch) for _, layer, method in panels]

    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.1 * len(originals)), dpi=90)
    for row, original in enumerate(originals):
        label = model.labels.name(int(results[0].classes[row, 0]))
        pictures = [("input", original)] + [
            (title, render.overlay(original, render.normalise(result.maps[row, 0]), "jet", 0.5))
            for (title, _, _), result in zip(panels, results)
        ]
        for column, (title, picture) in enumerate(pictures):
            ax = figure.add_subplot(len(originals), len(pictures), row * len(pictures) + column + 1)
            ax.imshow(picture)
            ax.set_title(f"{title}" + (f" (class {label})" if column == 0 else ""), fontsize=9)
            ax.axis("off")
    figure.suptitle(f"A ViT (4 blocks, 8×8 patches; validation accuracy {accuracy:.2f}) on scenes it never saw")
    figure.tight_layout()
    out = ROOT / "docs" / "transformers.png"
    figure.savefig(out)
    print(f"default layer {default}; validation accuracy {accuracy:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
