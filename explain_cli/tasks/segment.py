"""`explain segment`'s own pieces: the region each image's classes are explained over (a box, a mask file), the
finish step that writes the segmentation and the explanations, and the overlap with true masks (IoU).

A segmentation model scores every pixel (model/heads.py: a "pixels" head); a class of an image is explained by the sum of
its pixel scores over a region: where the model predicts it (by default), a box, or a mask of the user's.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from explain_cli.render import drawing
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.errors import BadArgument
from explain_cli.inputs import grids
from explain_cli.inputs.fitting import at_output
from explain_cli.inputs.sources import Canvas, Source, key_of, pixel_limit
from explain_cli.model.files import RuntimeModel
from explain_cli.io.files import Region
from explain_cli.running import grid_files
from explain_cli.running.values import explained, fitted
from explain_cli.running.pipeline import (Compute, Finish, ImageResult, RenderOptions, Written, image_fields, manifest_record,
                                          write_explanation)
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS


def parse_box(text: str) -> tuple[float, float, float, float]:
    """--region x0,y0,x1,y1 in the image's pixels (x1, y1 exclusive); BadArgument otherwise."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise BadArgument("--region", f"{text!r} is not x0,y0,x1,y1 (four numbers, the image's pixels)") from None
    if x1 <= x0 or y1 <= y0:
        raise BadArgument("--region", f"{text!r}: x1 must be above x0 and y1 above y0")
    return x0, y0, x1, y1


def regions(box: tuple[float, float, float, float] | None, masks: Path | Mapping[Any, Any] | None, height: int,
            width: int, canvas: Canvas | None = None) -> Callable[[list[Source]], tuple[np.ndarray, list[str]]]:
    """sources -> (their regions (b, height, width) at the model's input, 1 inside), and the sources with no mask:
    a box in each image's own pixels, or each image's mask (a PNG of the same relative path under the folder
    `masks`, or an array in a mapping from each image's key; non-zero inside)."""

    def of(sources: list[Source]) -> tuple[np.ndarray, list[str]]:
        found = np.zeros((len(sources), height, width), np.float32)
        missing = []
        for i, source in enumerate(sources):
            if box is not None:
                image_width, image_height = size_of(source)
                if canvas is not None and canvas.resize == "letterbox" and not source.as_input:
                    x0, y0, x1, y1 = canvas.to_input(np.array(box), (image_height, image_width))
                else:
                    sx, sy = width / image_width, height / image_height
                    x0, y0, x1, y1 = np.array(box) * np.array([sx, sy, sx, sy])
                found[i, int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = 1.0
            elif masks is not None:
                mask = read_mask(masks / PurePosixPath(source.relative).with_suffix(".png")) \
                    if isinstance(masks, Path) else masks.get(source.key)
                if mask is None:
                    missing.append(source.shown)
                    continue
                inside = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
                if canvas is not None and canvas.resize == "letterbox" and not source.as_input:
                    _, top, left, inner_h, inner_w = canvas.fit(inside.height, inside.width)
                    placed = inside.resize((inner_w, inner_h), Image.Resampling.NEAREST)
                    found[i, top:top + inner_h, left:left + inner_w] = np.asarray(placed) > 0
                else:
                    found[i] = np.asarray(inside.resize((width, height), Image.Resampling.NEAREST)) > 0
        return found, missing

    return of


def given_region(region: Any, kind: str, height: int, width: int, key: Callable[[Any], Any],
                 canvas: Canvas | None = None) -> Callable[[list[Source]], tuple[np.ndarray, list[str]]]:
    """The library's region: a box (x0, y0, x1, y1) in each image's pixels, or a mapping from each image's key to its
    mask (an array, non-zero inside); BadArgument for a model that outputs no classes per pixel."""
    if kind != "pixels":
        raise BadArgument("--region", "a region is a segmentation's: this model outputs no classes per pixel")
    if isinstance(region, Mapping):
        return regions(None, {key(k): v for k, v in region.items()}, height, width, canvas)
    return regions(parse_box(",".join(str(v) for v in region)), None, height, width, canvas)


def size_of(source: Source) -> tuple[int, int]:
    """An input's (width, height), from its header (or its array): what a box in its pixels is scaled by."""
    if source.pixels is not None:
        shape = np.shape(source.pixels) if not isinstance(source.pixels, Image.Image) else source.pixels.size[::-1]
        return int(shape[1]), int(shape[0])
    with pixel_limit(DEFAULT_MAX_PIXELS), Image.open(source.path) as image:
        return image.size


def read_mask(path: Path) -> np.ndarray | None:
    """A mask or label PNG as integers (h, w); None where there is no such file."""
    if not path.is_file():
        return None
    with pixel_limit(DEFAULT_MAX_PIXELS), Image.open(path) as image:
        return np.asarray(image.convert("L") if image.mode not in ("L", "P", "I", "I;16") else image).astype(np.int64)


def overlap(predicted: np.ndarray, truth: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the pixels predicted and true (intersection) and predicted or true (union); the prediction is
    upsampled (nearest) to the true mask's size (a volume's: its voxels)."""
    resized = class_map(predicted, *truth.shape)
    both = np.bincount(resized[resized == truth], minlength=classes)[:classes]
    either = (np.bincount(resized.ravel(), minlength=classes)[:classes] + np.bincount(
        np.clip(truth.ravel(), 0, classes), minlength=classes + 1)[:classes] - both)
    return both, either


def finish_step(names: Sequence[str], top: int, options: RenderOptions, truth_masks: Path | None,
                missing: Callable[[Source], bool] = lambda source: False) -> Finish:
    """A finish step that writes an image's segmentation (its classes coloured over it, with a legend) and each
    explained class's overlay, a manifest line each; its classes on stdout; its overlap with its true mask."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        classes = fitted(batch.extras["segmentation"][row], options.canvas, source, original, nearest=True)
        files = output.FileSet(options.out_dir)
        written: list[tuple[Written, Any]] = []
        warnings = [f"warning: {source.shown}: no mask for it under --region-masks: its region is empty"] \
            if missing(source) else []
        picture = source.stem.with_name(f"{source.stem.name}.segmentation.png").as_posix()
        labels: dict = {}
        with files.complete_or_removed():
            if original.ndim == 4:  # a volume: its montage in the classes' colours, and its label map as NIfTI
                picture, labels = grid_files.write_segmentation(source, files, original, classes, options.slices)
                ready = None
            else:
                files.write(picture, render.encode(drawing.segmentation(original, classes, names), "png"))
                ready = render.backdrop(original, options.alpha)
            for value in explained(source, original, row, batch, names, options.layer, options.method, options.floor,
                                   "pixels"):
                heatmap = render.normalise(value.map)
                if not heatmap.any():
                    warnings.append(f"warning: {source.shown}: the {options.method} map for class {value.class_index} "
                                    f"({value.label}) is all zero")
                written.append((write_explanation(source, files, value, heatmap, ready, options), value))
        fields = image_fields(source, batch.probabilities[row], names, options.listing)
        records = [{**manifest_record(w, options.model), "head": "pixels", "segmentation": picture,
                    "region_share": value.share, "region_pixels": int(round((value.share or 0) * np.prod(
                        original.shape[:-1]))), **labels,
                    "mean_probability": value.mean_probability, **fields} for w, value in written]
        shown = [Region(rank, value.class_index, value.label, float(value.share or 0.0),
                        float(value.mean_probability or 0.0)) for rank, (_, value) in enumerate(written[:top], 1)]
        truth = read_mask(truth_masks / PurePosixPath(source.relative).with_suffix(".png")) if truth_masks else None
        return ImageResult(source, predictions=shown, explanations=[w for w, _ in written], warnings=warnings,
                           records=records or [_no_class_record(source, options, picture, fields)],
                           overlap=None if truth is None else overlap(classes, truth, len(names)))

    return finish


def truth_masks(truth: Mapping[Any, Any] | str | Path | None,
                key: Callable[[Any], Any]) -> Callable[[Source], np.ndarray | None]:
    """source -> its true mask (class numbers per pixel), or None: from a folder of PNGs at the images' relative
    paths, or a mapping from each image's key to its mask."""
    if truth is None:
        return lambda source: None
    if isinstance(truth, Mapping):
        given = {key(k): np.asarray(v).astype(np.int64) for k, v in truth.items()}
        return lambda source: given.get(source.key)
    folder = Path(truth)
    if not folder.is_dir():
        raise BadArgument("--truth-masks", f"{folder}: no such folder")
    return lambda source: read_mask(folder / PurePosixPath(source.relative).with_suffix(".png"))


def class_map(classes: np.ndarray, *sides: int) -> np.ndarray:
    """Each pixel's class at an image's own (height, width) (a volume's voxels at its (depth, height, width)),
    upsampled by nearest neighbour from the model's output."""
    if classes.ndim == 3:
        return grids.nearest(classes, sides).astype(np.int64)
    height, width = sides
    resized = Image.fromarray(classes.astype(np.int32), mode="I").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(np.int64)


def predicted(names: Sequence[str], top: int, min_area: float,
              truth: Callable[[Source], np.ndarray | None], canvas: Canvas | None = None) -> Finish:
    """A finish step for the library's predict on a segmentation: each image's Segmentation, nothing written."""
    from explain_cli.results import Segmentation, frozen_array

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        shares, classes, means = (np.asarray(part[row]) for part in batch)
        classes = fitted(classes, canvas, source, original, nearest=True)
        order = [int(c) for c in np.argsort(-shares, kind="stable") if shares[c] >= min_area and shares[c] > 0][:top]
        found = tuple(Region(rank, c, output.label_of(names, c), float(shares[c]), float(means[c]))
                      for rank, c in enumerate(order, 1))
        mask = truth(source)
        both, either = overlap(classes, mask, len(shares)) if mask is not None else (None, None)
        value = Segmentation(source.key, found, frozen_array(shares),
                             class_map=frozen_array(class_map(classes, *original.shape[:classes.ndim])),
                             intersection=both, union=either)
        return ImageResult(source, values=[value])

    return finish


def _no_class_record(source: Source, options: RenderOptions, picture: str, fields: dict) -> dict:
    """The manifest line of an image none of whose classes was explained: its segmentation is still written."""
    return {"image": source.shown, "model": options.model, "layer": options.layer, "method": options.method,
            "class_index": None, "label": None, "head": "pixels", "segmentation": picture, "overlay": None,
            "heatmap": None, "figure": None, **fields}


class Segmenting:
    """An Explainer's segmentation steps: predict's Segmentation, RISE and occlusion over a class's region, evaluate's
    regions; for a Keras model compiled once, for a model file in numpy over its pixels' probabilities. It gives
    `_model`, `_loaded`, `_graph`, `_step`, `_run`, `settings`, `labels`, `head`, `precision`, `input_size`, `canvas`
    and `_fill`."""

    _model: Any
    _loaded: Any
    _graph: Any
    _step: Callable[..., Any]
    _run: Callable[..., Any]
    settings: Any
    labels: tuple[str, ...]
    input_size: tuple[int, int, int]
    _fill: float

    @property
    def head(self) -> Any:
        raise NotImplementedError

    @property
    def precision(self) -> str:
        raise NotImplementedError

    if TYPE_CHECKING:  # the Engine's, later in an Explainer's order: declared for the type checker alone

        @property
        def canvas(self) -> Any: ...

        @property
        def name(self) -> str: ...

        def _needs_head(self) -> Any: ...

    def check_segmenter(self) -> None:
        """BadArgument unless the model outputs classes per pixel (a segmentation)."""
        if self._needs_head().kind != "pixels":
            raise BadArgument("--model", f"{self.name} outputs {self.head.kind}, not classes per pixel: explain segment "
                              "reads a segmentation model (an output of (batch, height, width, classes), or a "
                              "volume's (batch, depth, height, width, classes))")

    def _segment(self, images: Any, top: int, errors: str, truth: Any) -> list[Any]:
        from explain_cli.tasks import segment

        masks = segment.truth_masks(truth, key_of)
        finish = segment.predicted(self.labels, top, self.settings.min_area, masks, self.canvas)

        letterboxed = self.canvas.resize == "letterbox"

        def make(made: Any) -> Compute:
            step = made._segmentation(letterboxed)
            if letterboxed:  # shares and means on the pictures alone, not on the letterbox's grey
                return lambda batch, sources: step(batch, made._inside(sources))
            return lambda batch, sources: step(batch)

        return [r.values[0] for r in self._run(images, make, finish, errors)]

    def _inside(self, sources: Sequence[Source]) -> np.ndarray:
        """(b, H, W) 1 where each picture lies on the model's input (all of it for one not letterboxed)."""
        from explain_cli.inputs.fitting import inside

        height, width, _ = self.input_size
        planes = inside([s.placed for s in sources], height, width)
        return planes if planes is not None else np.ones((len(sources), height, width), np.float32)

    def _segmentation(self, inside: bool = False) -> Callable[..., tuple[np.ndarray, ...]]:
        """uint8 batch (and with `inside`, where each picture lies on the input) -> a segmentation's (shares, class
        map, mean probabilities) over the pictures' pixels, compiled once."""
        from explain_cli.model import heads
        from explain_cli.steps import segmentation as pixel_steps

        if isinstance(self._model, RuntimeModel):
            pixels, head = self._pixels(), self.head

            def segmentation(batch: np.ndarray, *placed: np.ndarray) -> tuple[np.ndarray, ...]:
                probabilities = pixels(batch.astype(np.float32))
                where = heads.numpy_masks(head, probabilities)
                weights = at_output(placed[0], probabilities.shape[1:3]) if placed else np.ones(where.shape[:3])
                where = where * weights[..., None]
                return (where.sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1.0)[:, None],
                        heads.numpy_classes(head, probabilities), heads.numpy_region_means(probabilities, where))

            return segmentation

        return self._step(("segmentation", self.precision, inside),  # type: ignore[no-any-return]
                          lambda: pixel_steps.compile_segmentation(self._loaded, self._graph, inside))

    def _segment_perturbation(self, method: str, choice: Any) -> Any:
        """A perturbation method on a segmentation: each class's mean probability over its region
        (perturbing.segment_step)."""
        from explain_cli.steps import perturbing

        height, width, _ = self.input_size
        masks = self._step(("rise masks",), lambda: perturbing.masks_for(self.settings, height, width))
        return perturbing.segment_step(method, self._pixels(), self.head, choice, self.settings, masks, height, width,
                                       self._fill)

    def _pixels(self) -> Callable[[np.ndarray], np.ndarray]:
        """A segmentation's float pixels -> (n, h, w, classes) each pixel's probabilities, compiled once."""
        from explain_cli.steps import segmentation as pixel_steps

        if isinstance(self._model, RuntimeModel):
            assert self._model.pixels is not None, "a model file read as a segmentation has its pixels' forward"
            return self._model.pixels
        return self._step(("pixels", self.precision),  # type: ignore[no-any-return]
                          lambda: pixel_steps.compile_pixel_probabilities(self._loaded, self._graph))

    def _region_steps(self) -> Any:
        """A segmentation's two steps for evaluate (segmentation.compile_regions): where each class is predicted, and
        each class's mean probability over a region."""
        from explain_cli.model import heads
        from explain_cli.steps import segmentation as pixel_steps

        if not isinstance(self._model, RuntimeModel):
            return self._step(("regions", self.precision),
                              lambda: pixel_steps.compile_regions(self._loaded, self._graph))
        pixels, head = self._pixels(), self.head

        def region_mean(batch: np.ndarray, regions: np.ndarray) -> np.ndarray:
            return heads.numpy_region_means(pixels(batch), regions[None])  # type: ignore[no-any-return]

        return (lambda batch: heads.numpy_masks(head, pixels(batch.astype(np.float32)))), region_mean
