"""How an explanation becomes files: the options of a run's drawing, the files of one explanation (its overlay; with
the options, its .npy, grey map and figure; a volume's or a clip's own: running/grid_files.py), and its manifest
line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain_cli.inputs import sources as inputs
from explain_cli.inputs.sources import Source
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.results import SLICES, Explanation, map_title


@dataclass(frozen=True)
class Written:
    """An explanation and the files it was written to, relative to the output folder."""

    explanation: Explanation
    image: str  # the image as shown
    overlay: str
    heatmap_file: str | None
    figure_file: str | None
    map_file: str | None = None  # pixel attributions: the map itself as a grey PNG
    more: dict = field(default_factory=dict)  # a volume's or a clip's files and fields (running/grid_files.py)

    @property
    def class_index(self) -> int:
        return self.explanation.class_index

    @property
    def label(self) -> str:
        return self.explanation.label

    @property
    def rank(self) -> int:
        return self.explanation.rank

    @property
    def probability(self) -> float:
        return self.explanation.probability


@dataclass(frozen=True)
class RenderOptions:
    out_dir: Path
    method: str
    layer: str | None  # None: a method that needs no layer
    model: str = ""  # its name, for the manifest
    colormap: str = "jet"
    alpha: float = 0.4
    image_format: str = "jpg"
    save_heatmap: bool = False
    figure: bool = False
    grey_map: bool = False  # also write the normalised map as an 8-bit grey PNG at its own resolution
    listing: output.Listing = output.Listing()  # how predictions are listed, by the kind of head
    floor: float | None = None  # explain only the classes showing at least this (labels: a probability)
    canvas: inputs.Canvas | None = None  # how pictures were fitted to the input: maps are cut back to a letterbox's
    input_name: str | None = None  # a model of several inputs: the one explained
    slices: int = SLICES  # a volume's montage: slices along each axis; a clip's strip: key frames


def write_explanation(source: Source, files: output.FileSet, value: Explanation, heatmap: np.ndarray,
                      ready: render.Backdrop | None, options: RenderOptions) -> Written:
    """An explanation's files (overlay; with the options, its .npy, grey map and figure), and their names; a volume's
    or a clip's own (`ready` None: there is no one picture to draw on)."""
    if value.grid is not None:
        from explain_cli.running import grid_files

        picture, more = grid_files.write(source, files, value, options)
        return Written(value, source.shown, picture, more.pop("heatmap", None), None, more=more)
    def name(suffix: str) -> str:
        return output.explanation_name(source.stem, options.method, value.class_index, value.label, suffix).as_posix()

    blended = render.overlay_on(ready, heatmap, options.colormap)
    if value.box is not None:  # a detection: its box drawn over its map
        from explain_cli.render import drawing

        blended = drawing.boxes(blended, [(value.box, value.class_index, f"{value.label} {value.probability:.2f}")])
    overlay = name(options.image_format)
    heatmap_file = name("npy") if options.save_heatmap else None
    figure_file = name("figure.png") if options.figure else None
    map_file = name("map.png") if options.grey_map else None
    files.write(overlay, render.encode(blended, options.image_format))
    if heatmap_file:
        files.write(heatmap_file, output.npy_bytes(heatmap))
    if map_file:
        files.write(map_file, render.encode_grey(heatmap))
    if figure_file:
        title = map_title(value.label, value.class_index, value.probability, options.method, options.layer)
        files.write(figure_file, render.figure(value.image, heatmap, np.asarray(blended), title, options.colormap))
    return Written(value, source.shown, overlay, heatmap_file, figure_file, map_file)


def manifest_record(written: Written, model: str) -> dict:
    value = written.explanation
    return {
        "image": written.image,
        "model": model,
        "layer": value.layer,
        "method": value.method,
        "class_index": value.class_index,
        "label": value.label,
        "score": value.probability,
        "target_score": value.target_score,
        "rank": value.rank,
        "overlay": written.overlay,
        "heatmap": written.heatmap_file,
        "figure": written.figure_file,
        **({"map": written.map_file} if written.map_file else {}),
        **({"input": value.input} if value.input else {}),
        **written.more,
        **({"attributions": {name: v.tolist() for name, v in value.attributions.items()}} if value.attributions
           else {}),
    }
