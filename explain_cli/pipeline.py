"""Images through the stages in batches: decode → model → render → write, in input order.

The pipeline owns batching, ordering and per-file errors, so no method or renderer knows about
folders or failures. Decoding of the next batch and rendering of the previous one run in threads
(Pillow and numpy release the GIL) while the model computes the current one.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from explain_cli import inputs, output, render
from explain_cli.errors import BadInput
from explain_cli.inputs import Source
from explain_cli.output import Prediction


@dataclass(frozen=True)
class Explanation:
    """One written explanation: which class of which image, its map, and where it went."""

    image: str
    class_index: int
    label: str
    rank: int
    probability: float
    score: float  # the score that was differentiated: logit or probability
    layer: str
    method: str
    heatmap: np.ndarray  # normalised to [0, 1], at the layer's resolution
    overlay: str  # relative to the output folder
    heatmap_file: str | None
    figure_file: str | None
    map_file: str | None = None  # pixel attributions: the map itself as a grey PNG


@dataclass(frozen=True)
class ImageResult:
    source: Source
    predictions: list[Prediction] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the image was read, for --verbose
    error: str | None = None
    records: list[dict] = field(default_factory=list)  # its manifest lines, naming every file written
    side_records: list[dict] = field(default_factory=list)  # lines of a second record file (evaluate's sanity.jsonl)
    truth: int | None = None  # the true class, when known (--truth)
    truth_rank: int | None = None  # where the model ranks it: 1 is a correct top-1 prediction

    def files(self) -> list[str]:
        """The files written for this image, relative to the output folder."""
        return output.files_of(self.records + self.side_records)


@dataclass(frozen=True)
class RenderOptions:
    out_dir: Path
    method: str
    layer: str
    model: str = ""  # its name, for the manifest
    colormap: str = "jet"
    alpha: float = 0.4
    image_format: str = "jpg"
    save_heatmap: bool = False
    figure: bool = False
    grey_map: bool = False  # also write the normalised map as an 8-bit grey PNG at its own resolution


# A batch's images, once decoded: (source, the picture or the reason it failed, model input).
Decoded = tuple[Source, "inputs.Picture | BadInput", "np.ndarray | None"]
Finish = Callable[[Source, np.ndarray, int, object], ImageResult]
Compute = Callable[[np.ndarray, list[Source]], object]


class Run:
    """One ImageResult per source, in input order, as an iterator; `compute(images, sources)` maps a uint8
    batch (and the sources it holds) to one batch result, `finish(source, original, row, batch_result)` turns a row of it into an ImageResult.

    At most three batches are in memory (decoding, computing, rendering), whatever the folder's size.
    `stop()` ends a run early (an interrupt, a closed stdout, a full disk): it cancels what has not
    started, waits for what has, so no output is left half-written, and returns the results that were
    finished but not yet handed out, so that their files can still be accounted for.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        compute: Compute,
        finish: Finish,
        *,
        size: tuple[int, int, int],
        batch_size: int,
        max_pixels: int = inputs.DEFAULT_MAX_PIXELS,
        threads: int | None = None,
    ) -> None:
        self.last: ImageResult | None = None  # the result handed out most recently
        self._pending: deque[Future[ImageResult]] = deque()  # finishing, in input order, not yet handed out
        self._pool = ThreadPoolExecutor(max_workers=threads or min(8, (os.cpu_count() or 2) + 2))
        self._results = self._produce(sources, compute, finish, size, batch_size, max_pixels)

    def __iter__(self) -> Iterator[ImageResult]:
        return self

    def __next__(self) -> ImageResult:
        return next(self._results)

    def stop(self) -> list[ImageResult]:
        """Cancel what has not started, wait for what has; the finished results not yet handed out."""
        self._results.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        finished = [f.result() for f in self._pending if not f.cancelled() and f.exception() is None]
        self._pending.clear()
        return finished

    def _produce(
        self, sources: Sequence[Source], compute: Compute, finish: Finish,
        size: tuple[int, int, int], batch_size: int, max_pixels: int,
    ) -> Iterator[ImageResult]:
        height, width, channels = size
        chunks = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]

        def load(source: Source) -> Decoded:
            try:
                picture = inputs.decode(source, max_pixels)
                return source, picture, inputs.model_input(picture.rgb, width, height, channels)
            except BadInput as error:
                return source, error, None

        try:
            decoding = [self._pool.submit(load, s) for s in chunks[0]] if chunks else []
            for index in range(len(chunks)):
                decoded = [f.result() for f in decoding]
                if index + 1 < len(chunks):
                    decoding = [self._pool.submit(load, s) for s in chunks[index + 1]]
                ahead = len(self._pending)  # the previous batch, rendering while this one computes
                self._pending.extend(_compute_and_finish(self._pool, decoded, compute, finish))
                for _ in range(ahead):
                    yield self._hand_out()
            while self._pending:
                yield self._hand_out()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _hand_out(self) -> ImageResult:
        # Waiting may be interrupted: the future then stays pending, and stop() returns it once finished.
        result = self._pending[0].result()
        self.last = result
        self._pending.popleft()
        return result


def _compute_and_finish(
    pool: ThreadPoolExecutor, decoded: list[Decoded], compute: Compute, finish: Finish
) -> list[Future[ImageResult]]:
    good = [(source, picture, x) for source, picture, x in decoded if x is not None]
    result = compute(np.stack([x for _, _, x in good]), [source for source, _, _ in good]) if good else None
    rows = {id(source): row for row, (source, _, _) in enumerate(good)}

    def finish_with_notes(source: Source, picture: inputs.Picture) -> ImageResult:
        done = finish(source, picture.rgb, rows[id(source)], result)
        return dataclasses.replace(done, notes=list(picture.notes))

    futures: list[Future[ImageResult]] = []
    for source, picture, _ in decoded:
        if isinstance(picture, BadInput):
            failed: Future[ImageResult] = Future()
            failed.set_result(ImageResult(source, error=str(picture)))
            futures.append(failed)
        else:
            futures.append(pool.submit(finish_with_notes, source, picture))
    return futures


Truth = Optional[Mapping[Source, int]]  # each source's true class, or None when --truth is not given


def predictions_only(names: Sequence[str], top: int, truth: Truth = None) -> Finish:
    """A finish step for `explain predict`: the top predictions, nothing written."""

    def finish(source: Source, original: np.ndarray, row: int, probabilities: object) -> ImageResult:
        predictions = output.top_predictions(probabilities[row], names, top)
        return ImageResult(source, predictions=predictions, **_truth_of(source, probabilities[row], truth))

    return finish


def _truth_of(source: Source, probabilities: np.ndarray, truth: Truth) -> dict:
    """ImageResult's truth fields: the true class and the rank the model gives it (1 + classes above it)."""
    if truth is None or source not in truth:
        return {}
    true_class = truth[source]
    return {"truth": true_class, "truth_rank": int(np.sum(probabilities > probabilities[true_class])) + 1}


def image_fields(source: Source, probabilities: np.ndarray, names: Sequence[str]) -> dict:
    """What a manifest line says of its image, for the report: where it is, the top-5 and the prediction's
    entropy, −Σ p log p in nats."""
    p = np.asarray(probabilities, np.float64)
    p = p[p > 0]
    return {
        "source": str(source.path.absolute()),
        "predictions": [[q.class_index, q.label, q.probability] for q in output.top_predictions(probabilities, names, 5)],
        "entropy": float(-(p * np.log(p)).sum()),
    }


def truth_record(result_truth: int | None, truth_rank: int | None, truth: Truth, names: Sequence[str]) -> dict:
    """The manifest's truth fields, present whenever --truth was given (null for an image it does not list)."""
    if truth is None:
        return {}
    label = None if result_truth is None else output.label_of(names, result_truth)
    return {"truth": result_truth, "truth_label": label, "correct": None if truth_rank is None else truth_rank == 1}


def activation_grids(out_dir: Path, layers: Sequence[str], max_channels: int, model: str = "") -> Finish:
    """A finish step for `explain activations`: one channel-grid PNG per layer, named after it."""

    def finish(source: Source, original: np.ndarray, row: int, per_layer: object) -> ImageResult:
        files = output.FileSet(out_dir)
        records = []
        with files.complete_or_removed():
            for layer, batch in zip(layers, per_layer):
                grid = render.channel_grid(batch[row][..., :max_channels])
                name = source.stem.with_name(f"{source.stem.name}.activations.{output.safe_label(layer)}.png")
                files.write(name.as_posix(), render.encode(grid, "png"))
                records.append({"image": source.shown, "model": model, "layer": layer, "method": "activations",
                                "grid": name.as_posix()})
        return ImageResult(source, records=records)

    return finish


def explanations(names: Sequence[str], top: int, options: RenderOptions, truth: Truth = None) -> Finish:
    """A finish step that renders and writes each explained class of an image (overlay, .npy, figure)."""

    def finish(source: Source, original: np.ndarray, row: int, batch: object) -> ImageResult:
        probabilities = batch.probabilities[row]
        predictions = output.top_predictions(probabilities, names, top)
        written, warnings = [], []
        ready = render.backdrop(original, options.alpha)
        files = output.FileSet(options.out_dir)
        with files.complete_or_removed():  # an image's files all exist, or none do
            for class_index, score, raw in zip(batch.classes[row], batch.scores[row], batch.maps[row]):
                class_index = int(class_index)
                label = output.label_of(names, class_index)
                heatmap = render.normalise(raw)
                if not heatmap.any():
                    warnings.append(f"warning: {source.shown}: the {options.method} map for class {class_index} "
                                    f"({label}) is all zero")
                written.append(_write(source, files, original, ready, heatmap, class_index, label, float(score),
                                      probabilities, options))
        known = _truth_of(source, probabilities, truth)
        fields = {**truth_record(known.get("truth"), known.get("truth_rank"), truth, names),
                  **image_fields(source, probabilities, names)}
        records = [{**manifest_record(e, options.model), **fields} for e in written]
        return ImageResult(source, predictions=predictions, explanations=written, warnings=warnings, records=records,
                           **known)

    return finish


def _write(
    source: Source,
    files: output.FileSet,
    original: np.ndarray,
    ready: render.Backdrop,
    heatmap: np.ndarray,
    class_index: int,
    label: str,
    score: float,
    probabilities: np.ndarray,
    options: RenderOptions,
) -> Explanation:
    def name(suffix: str) -> str:
        return output.explanation_name(source.stem, options.method, class_index, label, suffix).as_posix()

    probability = float(probabilities[class_index])
    rank = int(np.sum(probabilities > probabilities[class_index])) + 1
    blended = render.overlay_on(ready, heatmap, options.colormap)
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
        title = f"{label} ({class_index}): p = {probability:.3f}, {options.method} at {options.layer}"
        files.write(figure_file, render.figure(original, heatmap, np.asarray(blended), title, options.colormap))
    return Explanation(
        image=source.shown,
        class_index=class_index,
        label=label,
        rank=rank,
        probability=probability,
        score=score,
        layer=options.layer,
        method=options.method,
        heatmap=heatmap,
        overlay=overlay,
        heatmap_file=heatmap_file,
        figure_file=figure_file,
        map_file=map_file,
    )


def manifest_record(explanation: Explanation, model: str) -> dict:
    return {
        "image": explanation.image,
        "model": model,
        "layer": explanation.layer,
        "method": explanation.method,
        "class_index": explanation.class_index,
        "label": explanation.label,
        "score": explanation.probability,
        "target_score": explanation.score,
        "rank": explanation.rank,
        "overlay": explanation.overlay,
        "heatmap": explanation.heatmap_file,
        "figure": explanation.figure_file,
        **({"map": explanation.map_file} if explanation.map_file else {}),
    }
