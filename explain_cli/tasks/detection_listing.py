"""`explain detect`'s files and rows: an image's detections drawn (<stem>.detections.jpg), each explained box's map
blended with its box drawn (<stem>.det<k>.<method>.<class>-<label>.jpg), a manifest line per box, a stdout row per
detection, and the detections matched against true boxes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from explain_cli.tasks import boxes as box_module
from explain_cli.render import drawing
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.inputs.sources import Source
from explain_cli.io.files import Prediction
from explain_cli.running.pipeline import ImageResult, RenderOptions, Written, manifest_record, write_explanation


@dataclass(frozen=True)
class Detected(Prediction):
    """A detection as stdout lists it: `rank` is k, `probability` its score, `box` in the image's pixels."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def row(self) -> dict:
        return {"k": self.rank, "class_index": self.class_index, "label": self.label, "score": self.probability,
                "box": [round(v, 2) for v in self.box]}

    def tsv(self, image: str) -> str:
        x0, y0, x1, y1 = self.box
        label = self.label.replace("\t", " ").replace("\n", " ")  # a column of its own, whatever the labels file says
        return (f"{image}\t{self.rank}\t{self.class_index}\t{label}\t{self.probability:.6f}\t{x0:.1f}\t{y0:.1f}\t"
                f"{x1:.1f}\t{y1:.1f}\n")

    def line(self) -> str:
        x0, y0, x1, y1 = self.box
        return f"  {self.rank}. {self.label:<24} {self.class_index:>5}  {self.probability:6.1%}  at ({x0:.0f}, {y0:.0f}, " \
               f"{x1:.0f}, {y1:.0f})\n"


def finish_step(made: Any, options: RenderOptions, truth: dict | None,
                explained: Callable[..., list[Any]]) -> Callable[[Source, np.ndarray, int, Any], ImageResult]:
    """A finish step writing an image's detections picture and each detection's explanation; `explained` (the
    library's detect.explanations) makes each detection's value."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        values = explained(made, source, original, batch.images[row])
        files = output.FileSet(options.out_dir)
        picture = source.stem.with_name(f"{source.stem.name}.detections.{options.image_format}").as_posix()
        written: list[Written] = []
        warnings = []
        with files.complete_or_removed():
            drawn = drawing.boxes(original, [(v.box, v.class_index, f"{v.rank}. {v.label} {v.probability:.2f}")
                                             for v in values])
            files.write(picture, render.encode(np.asarray(drawn), options.image_format))
            ready = render.backdrop(original, options.alpha)
            for value in values:
                heatmap = render.normalise(value.map)
                if not heatmap.any():
                    warnings.append(f"warning: {source.shown}: the {options.method} map of detection {value.rank} "
                                    f"({value.label}) is all zero")
                written.append(write_explanation(_numbered(source, value.rank), files, value, heatmap, ready, options))
        records = [{**manifest_record(w, options.model), "head": "detections", "detection": w.rank,
                    "box": [round(v, 2) for v in w.explanation.box], "detections": picture,
                    "source": str(source.path.absolute())} for w in written]
        if not records:
            records = [{"image": source.shown, "model": options.model, "layer": options.layer,
                        "method": options.method, "head": "detections", "detection": None, "class_index": None,
                        "label": None, "box": None, "overlay": None, "heatmap": None, "figure": None,
                        "detections": picture, "source": str(source.path.absolute())}]
        shown = [Detected(v.rank, v.class_index, v.label, v.probability, v.box) for v in values]
        found = [box_module.Found(source.key, v.class_index, v.probability, v.box) for v in values]
        true_boxes = None if truth is None else truth.get(source.key, [])
        return ImageResult(source, predictions=shown, explanations=written, warnings=warnings, records=records,
                           detected=(found, true_boxes) if truth is not None else None)

    return finish


def _numbered(source: Source, k: int) -> Source:
    """The source an explained detection's files are named by: <stem>.det<k>, so they read
    <stem>.det<k>.<method>.<class>-<label>.jpg."""
    return dataclasses.replace(source, stem=source.stem.with_name(f"{source.stem.name}.det{k}"))


def truth_boxes(known: dict[Any, list[Any]]) -> dict[Any, list[tuple[int, tuple[float, ...]]]]:
    """--truth FILE.csv's boxes (evaluate.read_boxes) as (class, box) per image; ExplainError where one has no class."""
    from explain_cli.errors import BadArgument

    found: dict[Any, list[tuple[int, tuple[float, ...]]]] = {}
    for key, labelled in known.items():
        for box in labelled:
            if box.class_index is None:
                raise BadArgument("--truth", f"{key}: a box with no class; detection truth needs the class column")
            found.setdefault(key, []).append((int(box.class_index), tuple(box.box)))
    return found
