"""--engine ray: the same decode → compute → finish, batch by batch, on Ray Data actors.

Each actor loads the model and builds its steps once (the command's `make`), then runs the local
pipeline on each batch it is given: decoding, the model, rendering and writing into OUT_DIR, which every
node must see. It returns what the driver needs to account for each image (its manifest lines, stdout
rows, warnings, error) as JSON; the driver alone writes the manifest and stdout, in input order. A
worker that dies has its actor restarted and its batch retried by Ray; the batch's files are written
again under the same names (atomically), and the driver still receives each batch once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from explain_cli.running import pipeline
from explain_cli.model.backend import native_stderr_silenced
from explain_cli.tasks.boxes import Found
from explain_cli.tasks.detection_listing import Detected
from explain_cli.errors import ExplainError, install
from explain_cli.inputs.sources import Source
from explain_cli.io.files import Prediction, Value


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ExplainError(f"--engine ray needs Ray: {install('ray')}") from None
    return ray


class _Worker:
    """A Ray Data actor: the model and its steps, built once; then one batch of images per call."""

    def __init__(self, load: Callable[[], Any], make: Callable[[Any], tuple], max_pixels: int) -> None:
        from explain_cli.model import backend

        backend.quiet_process()  # a worker of the command line, as quiet as its driver
        made = load()  # an Explainer, made from the driver's settings
        from explain_cli.cli.runs import steps_of

        self.compute, self.finish = steps_of(make, made)
        self.size, self.resize, self.display = made.input_shape, made.resize, made.display_channels
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [Source(Path(path), str(shown), PurePosixPath(str(stem)))
                   for path, shown, stem in zip(batch["path"], batch["shown"], batch["stem"])]
        run = pipeline.Run(sources, self.compute, self.finish, size=self.size, batch_size=len(sources),
                           max_pixels=self.max_pixels, resize=self.resize, display=self.display)
        results = [encode(result) for result in run]
        return {"index": batch["index"], "result": np.array(results, dtype=object)}


# What an image's stdout rows can be: a class's probability, a value, a detection (its box too).
ROWS: dict[str, Any] = {kind.__name__: kind for kind in (Prediction, Value, Detected)}


def encode(result: pipeline.ImageResult) -> str:
    """What the driver needs of an image's result, as JSON (not its maps: they are in the files already)."""
    detected = None
    if result.detected is not None:  # a detector's, with true boxes: what its mAP is counted from
        found, true = result.detected
        detected = [[[f.image, f.class_index, f.score, f.box] for f in found], true]
    return json.dumps({
        "predictions": [[type(p).__name__, *dataclasses.astuple(p)] for p in result.predictions],
        "warnings": result.warnings, "notes": result.notes, "error": result.error, "records": result.records,
        "side_records": result.side_records, "truth_rank": result.truth_rank,
        "truth": sorted(result.truth) if isinstance(result.truth, frozenset) else result.truth,
        "shown": None if result.shown is None else result.shown.tolist(), "detected": detected,
    })


def decode(source: Source, text: str) -> pipeline.ImageResult:
    fields = json.loads(text)
    predictions = [ROWS[kind](*(tuple(v) if isinstance(v, list) else v for v in values))
                   for kind, *values in fields.pop("predictions")]
    if isinstance(fields["truth"], list):  # several labels per image: a set
        fields["truth"] = frozenset(fields["truth"])
    if fields["shown"] is not None:
        fields["shown"] = np.array(fields["shown"])
    if fields["detected"] is not None:
        found, true = fields["detected"]
        found = [Found(image, class_index, score, tuple(box)) for image, class_index, score, box in found]
        fields["detected"] = (found, None if true is None else [(class_index, tuple(box)) for class_index, box in true])
    return pipeline.ImageResult(source, predictions=predictions, **fields)


class RayRun:
    """The pipeline.Run interface over Ray Data: results in input order, `last`, and `stop()`."""

    def __init__(self, sources: Sequence[Source], load: Callable[[], Any], make: Callable[[Any], tuple], *,
                 batch_size: int, max_pixels: int, workers: int | None, address: str | None) -> None:
        self.last: pipeline.ImageResult | None = None
        self._sources = list(sources)
        ray = _import_ray()
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            _quiet(ray)
            try:
                with native_stderr_silenced():  # Ray's C++ start-up lines
                    ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.ERROR, configure_logging=True)
            except Exception as error:  # ConnectionError, RuntimeError, ValueError: a bad or unreachable address
                raise ExplainError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {error}") from None
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the driver prints and records in input order
        context.enable_progress_bars = False  # explain's own bar is the one on the terminal
        context.print_on_execution_start = False
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        items = [{"index": i, "path": str(s.path), "shown": s.shown, "stem": s.stem.as_posix()}
                 for i, s in enumerate(self._sources)]
        dataset = ray.data.from_items(items).map_batches(
            _Worker, fn_constructor_args=(load, make, max_pixels), batch_size=batch_size,
            concurrency=workers or max(1, len(nodes)), num_cpus=1, batch_format="numpy",
        )  # Ray Data's actors restart when they die, and their tasks are retried: a lost batch is done again
        self._results = self._produce(dataset.iter_batches(batch_size=None, batch_format="numpy"))

    def __iter__(self) -> Iterator[pipeline.ImageResult]:
        return self

    def __next__(self) -> pipeline.ImageResult:
        return next(self._results)

    def _produce(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[pipeline.ImageResult]:
        for batch in batches:
            for index, text in zip(batch["index"], batch["result"]):
                result = decode(self._sources[int(index)], str(text))
                self.last = result
                yield result

    def stop(self) -> list[pipeline.ImageResult]:
        """Stop the cluster's work for this run (its actors end with the driver's Ray session)."""
        self._results.close()
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()
        return []


def _quiet(ray: Any) -> None:
    """Ray's own logs and progress stay off stderr: explain prints its own lines."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


