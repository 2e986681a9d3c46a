"""The files of a volume's or a clip's explanation: a volume's montage and its map as NIfTI on its own grid; a clip's
overlay video at its frame rate and its strip of key frames over the curve of each frame's share of the map."""

from __future__ import annotations

from typing import Any

import numpy as np

from explain_cli.inputs import grids
from explain_cli.inputs.sources import Source
from explain_cli.io import files as output
from explain_cli.io import nifti
from explain_cli.render import grids as grid_render
from explain_cli.render import heatmaps as render
from explain_cli.results import Explanation, draw_grid, map_title


def write(source: Source, files: output.FileSet, value: Explanation, options: Any) -> tuple[str, dict]:
    """The explanation's files written; (the picture's name, the manifest's fields naming the others and, for a clip,
    each frame's share of the map)."""
    def name(suffix: str) -> str:
        return output.explanation_name(source.stem, options.method, value.class_index, value.label, suffix).as_posix()

    heatmap = value.heatmap()  # on the input's own grid, in [0, 1]
    title = map_title(value.label, value.class_index, value.probability, options.method, options.layer)
    picture = name(options.image_format)
    files.write(picture, render.encode(draw_grid(value, heatmap, title, options.colormap, options.alpha,
                                                 options.slices), options.image_format))
    fields: dict = {}
    if options.save_heatmap:
        fields["heatmap"] = name("npy")
        files.write(fields["heatmap"], output.npy_bytes(heatmap))
    grid = value.grid
    if grid.kind == grids.VOLUME:
        if not nifti.available():  # the run said so once, as it began
            return picture, fields
        fields["nifti"] = name("nii.gz")
        files.write(fields["nifti"], nifti.nifti_bytes(heatmap, grid.affine))
        return picture, fields
    fields["video"] = name("mp4")
    files.write(fields["video"], grid_render.video(value.image, heatmap, grid.rate, options.colormap, options.alpha))
    fields["frames"] = [round(float(m), 6) for m in grid_render.frame_mass(heatmap)]
    fields["first_frame"] = grid.start
    fields["rate"] = grid.rate
    return picture, fields


def write_segmentation(source: Source, files: output.FileSet, shown: np.ndarray, classes: np.ndarray,
                       slices: int) -> tuple[str, dict]:
    """A volume's segmentation: its montage in the classes' colours (PNG) and, where nibabel is installed, its class
    map as a NIfTI label map on its own grid and affine; (the montage's name, the manifest's field naming the map)."""
    grid = source.grid
    assert grid is not None
    own = grids.nearest(classes, shown.shape[:3])
    picture = source.stem.with_name(f"{source.stem.name}.segmentation.png").as_posix()
    files.write(picture, render.encode(grid_render.class_montage(shown, own, slices, grid.spacing), "png"))
    if not nifti.available():
        return picture, {}
    labels = source.stem.with_name(f"{source.stem.name}.segmentation.nii.gz").as_posix()
    files.write(labels, nifti.labels_bytes(own, grid.affine))
    return picture, {"segmentation_nifti": labels}
