"""Explain one image by every method, side by side, and time each method per image.

    .venv/bin/python scripts/compare_methods.py                       # the README picture (tiny model)
    .venv/bin/python scripts/compare_methods.py --model resnet50 --image sample_images/cat.jpg
    .venv/bin/python scripts/compare_methods.py --model resnet50 --weights W.h5 --timing-only

Without --model it trains the tests' tiny CNN on synthetic squares (a minute on a CPU) and explains a
scene it never saw, so the right answer is visible: the square. Times are per image on a batch of
--batch images, after the first call (compilation excluded).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
from explain_cli.methods import METHODS  # noqa: E402
from explain_cli.methods import PIXEL_METHODS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a built-in name or a model file (default: train the tiny model)")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image", type=Path, help="default: a synthetic scene (or sample_images/cat.jpg)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "methods.png")
    parser.add_argument("--batch", type=int, default=4, help="images per timed call")
    parser.add_argument("--timing-only", action="store_true")
    args = parser.parse_args()
    _, keras = load_tensorflow()

    if args.model is None:
        from tests.synthetic import SHAPE_CLASSES, make_scene, train_tiny_model

        folder = Path(tempfile.mkdtemp())
        (folder / "labels.txt").write_text("\n".join(SHAPE_CLASSES))
        path = folder / "tiny.keras"
        train_tiny_model(keras, path)
        model = models.load(str(path), labels_file=folder / "labels.txt")
        original = make_scene(np.random.default_rng(2026), 160, 200).image
    else:
        model = models.load(args.model, weights=args.weights)
        image = args.image or ROOT / "sample_images" / "cat.jpg"
        original = inputs.decode(inputs.Source(image, str(image), None)).rgb
    graph = explainer.graph_of(model)
    layer = explainer.default_layer(graph, model)
    cut = split.split(graph, layer)
    x = inputs.model_input(original, model.width, model.height, model.channels)[None]
    batch = np.repeat(x, args.batch, axis=0)

    steps = {name: explainer.compile_explain(model, cut, name, max_masks=32) for name in METHODS}
    steps["gradcam (counterfactual)"] = explainer.compile_explain(model, cut, "gradcam", counterfactual=True)
    for name in PIXEL_METHODS:
        steps[name] = explainer.compile_saliency(model, graph, name, layer=layer, samples=16, steps=32)

    maps, rows = {}, []
    for name, step in steps.items():
        step(batch)  # compile
        start = time.perf_counter()
        result = step(batch)
        seconds = (time.perf_counter() - start) / args.batch
        maps[name] = render.normalise(result.maps[0, 0])
        label = model.labels.name(int(result.classes[0, 0]))
        rows.append((name, seconds))
    print(f"{model.name}, layer {layer}, batch of {args.batch}; class explained: {label}\n")
    print("| method | time per image |\n| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.0f} ms |")
    if not args.timing_only:
        draw(original, maps, f"{model.name}: every method on one image (class {label})", args.out)
        print(f"\nwrote {args.out}")


def draw(original: np.ndarray, maps: dict[str, np.ndarray], title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    panels = [("input", original)] + [(name, render.overlay(original, m, "jet", 0.5)) for name, m in maps.items()]
    columns = 5
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.0 * columns, 2.7 * rows), dpi=100)
    for index, (name, picture) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, index + 1)
        ax.imshow(picture)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


if __name__ == "__main__":
    main()
