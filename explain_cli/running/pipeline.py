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
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from explain_cli.inputs import grids, held
from explain_cli.inputs.channels import displayed
from explain_cli.inputs import sources as inputs
from explain_cli.running import interrupts
from explain_cli.io import files as output
from explain_cli.render import heatmaps as render
from explain_cli.errors import BadInput, ExplainError, Notes, model_failure, out_of_memory
from explain_cli.inputs.sources import Source
from explain_cli.io.files import Prediction
from explain_cli.running.values import explained
from explain_cli.running.writing import (RenderOptions as RenderOptions, Written as Written,
                                         manifest_record as manifest_record, write_explanation as write_explanation)


@dataclass(frozen=True)
class ImageResult:
    source: Source
    predictions: list[Prediction] = field(default_factory=list)
    explanations: list[Written] = field(default_factory=list)
    values: list = field(default_factory=list)  # what the library hands out for this image (results.py)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the image was read, for --verbose
    error: str | None = None
    records: list[dict] = field(default_factory=list)  # its manifest lines, naming every file written
    side_records: list[dict] = field(default_factory=list)  # lines of a second record file (evaluate's sanity.jsonl)
    truth: int | frozenset[int] | None = None  # the true class (several labels per image: the set), when known
    truth_rank: int | None = None  # where the model ranks it: 1 is a correct top-1 prediction
    shown: np.ndarray | None = None  # several labels per image, with truth: each label's probability, to sum up
    overlap: tuple[np.ndarray, np.ndarray] | None = None  # a segmentation with a true mask: per class, pixels in both
    # and in either
    detected: tuple[list, list] | None = None  # a detector's, with true boxes: its detections (boxes.Found) and the
    # image's true (class, box) pairs

    def files(self) -> list[str]:
        """The files written for this image, relative to the output folder."""
        return output.files_of(self.records + self.side_records)


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
        sources: Iterable[Source],
        compute: Compute,
        finish: Finish,
        *,
        size: tuple[int, ...],
        batch_size: int,
        max_pixels: int = inputs.DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        resize: str = "stretch",
        display: tuple[int, ...] | None = None,
    ) -> None:
        self.last: ImageResult | None = None  # the result handed out most recently
        self._pending: deque[Future[ImageResult]] = deque()  # finishing, in input order, not yet handed out
        self._pool = ThreadPoolExecutor(max_workers=threads or min(8, (os.cpu_count() or 2) + 2))
        self._results = self._produce(sources, compute, finish, size, batch_size, max_pixels, resize, display)

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
        self, sources: Iterable[Source], compute: Compute, finish: Finish,
        size: tuple[int, ...], batch_size: int, max_pixels: int, resize: str = "stretch",
        display: tuple[int, ...] | None = None,
    ) -> Iterator[ImageResult]:
        height, width, channels = size[-3:]
        remaining = batches(sources, batch_size)  # a batch at a time: a generator of images is never read ahead

        def load(source: Source) -> Decoded:
            try:
                if len(size) == 4:  # a model of volumes or clips (depth, height, width, channels)
                    picture, x, source = grids.decode_for(source, size, max_pixels)  # type: ignore[arg-type]
                    return source, picture, x
                picture, x = inputs.decode_for(source, max_pixels, width, height, channels, resize)
                if display is not None and picture.planes is not None:  # the channels the maps are drawn on
                    picture = dataclasses.replace(picture, rgb=displayed(source.shown, picture.planes, display))
                if source.held is not None:  # a model of several inputs: the example's values for the others
                    source = dataclasses.replace(source, held_values=held.read(source.held, source.shown, max_pixels,
                                                                               resize))
                if resize == "letterbox" and not source.as_input:
                    _, top, left, inner_h, inner_w = inputs.Canvas(resize, height, width).fit(*picture.rgb.shape[:2])
                    source = dataclasses.replace(source, placed=(top, left, inner_h, inner_w))
                return source, picture, x
            except BadInput as error:
                return source, error, None

        def start_decoding() -> list[Future[Decoded]]:
            return [self._pool.submit(load, s) for s in next(remaining, [])]

        try:
            decoding = start_decoding()
            while decoding:
                decoded = [f.result() for f in decoding]
                decoding = start_decoding()  # the next batch, while this one computes
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


def batches(sources: Iterable[Source], batch_size: int) -> Iterator[list[Source]]:
    """The sources in batches of at most `batch_size`, each of one kind (pictures, or arrays that are the model's
    input as they stand), so that a batch is one stack through one step; a full batch is handed out before the next
    source is read."""
    batch: list[Source] = []
    for source in sources:
        if batch and source.as_input != batch[0].as_input:
            yield batch
            batch = []
        batch.append(source)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def by_reading(make: Callable[[bool], Compute]) -> Compute:
    """A compute step running, for each batch, the step made (once) for its kind: `make(False)` for pictures,
    `make(True)` for arrays that are the model's input as they stand (batches are of one kind: `batches`)."""
    made: dict[bool, Compute] = {}

    def compute(batch: np.ndarray, sources: list[Source]) -> object:
        given = sources[0].as_input
        if given not in made:
            made[given] = make(given)
        return made[given](batch, sources)

    return compute


def library_results(images: Any, compute: Compute, finish: Finish, size: tuple[int, ...], batch_size: int,
                    max_pixels: int, errors: str, arrays: str = "auto", notes: Notes | None = None,
                    resize: str = "stretch", display: tuple[int, ...] | None = None) -> Iterator[ImageResult]:
    """The library's run over images given in any form: each image's result in order; an image that cannot be used
    raises BadInput with errors="raise", and is left out with "skip", which says once the run ends how many it
    skipped and which (a warning in `notes`, else a Python warning). `arrays`: how arrays are read
    (inputs.ARRAY_READINGS)."""
    if errors not in ("raise", "skip"):
        from explain_cli.errors import BadArgument

        raise BadArgument(None, f"errors is 'raise' or 'skip', not {errors!r}")
    run = Run(inputs.sources_of(images, arrays), compute, finish, size=size, batch_size=batch_size, max_pixels=max_pixels,
              resize=resize, display=display)
    skipped: list[str] = []
    try:
        for result in run:
            if result.error is None:
                yield result
            elif errors == "raise":
                raise BadInput(result.source.shown, result.error.split(": ", 1)[-1])
            else:
                skipped.append(result.error)
    finally:
        run.stop()
    if skipped:
        shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        (notes if notes is not None else Notes()).add(f"skipped {len(skipped)} image{'s' * (len(skipped) > 1)} that "
                                                      f"could not be used: {shown}", warning=True)


def _compute_and_finish(
    pool: ThreadPoolExecutor, decoded: list[Decoded], compute: Compute, finish: Finish
) -> list[Future[ImageResult]]:
    good = [(source, picture, x) for source, picture, x in decoded if x is not None]
    try:
        with held.batch(held.stacked([source.held_values for source, _, _ in good])):
            result = compute(np.stack([x for _, _, x in good]), [source for source, _, _ in good]) if good else None
    except Exception as error:
        if interrupts.received() is not None:
            raise
        if out_of_memory(error):  # every later batch would fail alike: the run ends, what is done accounted
            raise ExplainError(f"out of memory computing a batch of {len(good)} images: try a smaller --batch-size "
                               "(batch_size= in Python)") from None
        failure = model_failure(error)
        if failure is None:  # explain's own: a bug, never a bad image
            raise
        # The model failed on this batch (a check of its own, a shape it refuses): each of its images says so (an
        # image that could not be read, why not), and the run goes on, as for an image that cannot be read.
        decoded = [(source, picture if isinstance(picture, BadInput) else
                    BadInput(source.shown, f"the model failed as it ran: {failure}"), None)
                   for source, picture, _ in decoded]
        result = None
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


def predictions_only(names: Sequence[str], top: int, truth: Truth = None,
                     listing: output.Listing = output.Listing()) -> Finish:
    """A finish step for `explain predict`: the top predictions, nothing written."""

    def finish(source: Source, original: np.ndarray, row: int, probabilities: Any) -> ImageResult:
        predictions = listing.predictions(probabilities[row], names, top)
        return ImageResult(source, predictions=predictions, **_truth_of(source, probabilities[row], truth))

    return finish


def _truth_of(source: Source, probabilities: np.ndarray, truth: Truth) -> dict:
    """ImageResult's truth fields: the true class and the rank the model gives it (1 + classes above it); for several
    labels per image, the true set and every label's probability."""
    if truth is None or source not in truth:
        return {}
    true_class = truth[source]
    if isinstance(true_class, frozenset):
        return {"truth": true_class, "shown": np.asarray(probabilities, np.float64)}
    return {"truth": true_class, "truth_rank": int(np.sum(probabilities > probabilities[true_class])) + 1}


def image_fields(source: Source, probabilities: np.ndarray, names: Sequence[str],
                 listing: output.Listing = output.Listing()) -> dict:
    """What a manifest line says of its image, for the report: where it is, the top-5 and the prediction's
    entropy, −Σ p log p in nats (for one label per image); for several labels per image, those listed."""
    fields = {"source": str(source.path.absolute()), "predictions": [
        [q.class_index, q.label, q.probability] for q in output.top_predictions(probabilities, names, 5)]}
    if listing.kind == "labels":
        return {**fields, "predicted_labels": [[q.class_index, q.label, q.probability]
                                               for q in listing.predictions(probabilities, names, len(names))]}
    if listing.kind != "classes":
        return fields
    p = np.asarray(probabilities, np.float64)
    p = p[p > 0]
    return {**fields, "entropy": float(-(p * np.log(p)).sum())}


def truth_record(known: dict, truth: Truth, names: Sequence[str], listing: output.Listing = output.Listing()) -> dict:
    """The manifest's truth fields, present whenever --truth was given (null for an image it does not list); for
    several labels per image, the true labels, and whether the labels predicted are exactly those."""
    if truth is None:
        return {}
    result_truth = known.get("truth")
    if isinstance(result_truth, frozenset):
        listed = {p.class_index for p in listing.predictions(known["shown"], names, len(names))}
        return {"truth": sorted(result_truth), "truth_label": [output.label_of(names, c) for c in sorted(result_truth)],
                "correct": listed == result_truth}
    label = None if result_truth is None else output.label_of(names, result_truth)
    truth_rank = known.get("truth_rank")
    return {"truth": result_truth, "truth_label": label, "correct": None if truth_rank is None else truth_rank == 1}


def values_only(names: Sequence[str], layer: str | None, method: str, floor: float | None = None,
                head: str = "classes", canvas: inputs.Canvas | None = None, input_name: str | None = None) -> Finish:
    """A finish step for the library: each image's explanations as values, nothing written."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        return ImageResult(source, values=explained(source, original, row, batch, names, layer, method, floor, head,
                                                    canvas, input_name))

    return finish


def explanations(names: Sequence[str], top: int, options: RenderOptions, truth: Truth = None) -> Finish:
    """A finish step that renders and writes each explained class of an image (overlay, .npy, figure)."""

    def finish(source: Source, original: np.ndarray, row: int, batch: Any) -> ImageResult:
        probabilities = batch.probabilities[row]
        predictions = options.listing.predictions(probabilities, names, top)
        written, warnings = [], []
        ready = render.backdrop(original, options.alpha) if original.ndim == 3 else None  # a volume or a clip: none
        files = output.FileSet(options.out_dir)
        with files.complete_or_removed():  # an image's files all exist, or none do
            for value in explained(source, original, row, batch, names, options.layer, options.method, options.floor,
                                   options.listing.kind, options.canvas, options.input_name):
                heatmap = render.normalise(value.map)
                if not heatmap.any():
                    warnings.append(f"warning: {source.shown}: the {options.method} map for class {value.class_index} "
                                    f"({value.label}) is all zero")
                written.append(write_explanation(source, files, value, heatmap, ready, options))
        known = _truth_of(source, probabilities, truth)
        fields = {**truth_record(known, truth, names, options.listing),
                  **image_fields(source, probabilities, names, options.listing)}
        predictions += [output.Attribution(w.rank, w.class_index, w.label, w.probability, name, tuple(
            float(v) for v in np.ravel(values))) for w in written for name, values in (
            w.explanation.attributions or {}).items()]  # a model of several inputs: its inputs of values
        kind = {} if options.listing.kind == "classes" else {"head": options.listing.kind}
        if options.listing.kind == "labels":
            kind["multi_label"] = True
        records = [{**manifest_record(w, options.model), **kind, **fields} for w in written]
        return ImageResult(source, predictions=predictions, explanations=written, warnings=warnings, records=records,
                           **known)

    return finish


