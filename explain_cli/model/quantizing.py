"""--precision int8: the forward-only passes as int8 models, made by OpenVINO's post-training quantisation (NNCF).

A converted pass (model/runtime.py) is quantised once, on a calibration batch: a seeded sample of the run's own
images (or of the images given with --calibration), decoded and preprocessed as the run feeds the model; without
one, the first batch the pass is given. Each quantised pass is kept on disk beside its float32 conversion, keyed by
its calibration batch, so a second run on the same images reads it back. Only forward-only passes run in int8: the
head and its gradient stay in float32 TensorFlow, so a map is exact for the activations int8 gives it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli import errors
from explain_cli.errors import ExplainError
from explain_cli.model import backend

SAMPLE = 64  # calibration images: NNCF's statistics settle by then (its default is 300, at 5x the time)
EXTRA = errors.install("int8")


def sample(items: Sequence[Any], seed: int, size: int = SAMPLE) -> list[Any]:
    """A seeded sample of `size` of the items, in their order (all of them, where there are fewer)."""
    if len(items) <= size:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), size))]


def calibration_of(model: Any, settings: Any) -> Callable[[], np.ndarray] | None:
    """The calibration batch of an int8 run's settings (settings.Settings) as a function, read once when first
    called; None without calibration images (then the first batch each pass is given)."""
    if settings.precision != "int8" or settings.calibration is None:
        return None
    return functools.cache(lambda: calibration_batch(model, settings.calibration, settings.seed, settings.max_pixels,
                                                     settings.resize))


def calibration_batch(model: Any, images: str | Sequence[str], seed: int, max_pixels: int,
                      resize: str = "stretch") -> np.ndarray:
    """The model's inputs (a LoadedModel's) for a seeded sample of `images` (a folder, or image paths), decoded and
    preprocessed as a run feeds them; those that cannot be read are left out. ExplainError where none can be."""
    import sys

    from explain_cli.errors import BadInput
    from explain_cli.inputs import finding, sources

    given = [images] if isinstance(images, str) else list(images)
    found = [s for s in finding.discover(given, sys.stdin) if s.grid is None]
    rows = []
    for source in sample(found, seed):
        try:
            rows.append(sources.decode_for(source, max_pixels, model.width, model.height, model.channels, resize)[1])
        except BadInput:
            continue
    if not rows:
        raise ExplainError(f"--calibration: no image to calibrate int8 on in {', '.join(given)}")
    import tensorflow as tf

    return np.asarray(model.preprocess(tf.cast(np.stack(rows), tf.float32)), np.float32)


def key(batch: np.ndarray) -> str:
    """A calibration batch's name in the cache: its shape and bytes, hashed."""
    digest = hashlib.sha256(repr(batch.shape).encode())
    digest.update(np.ascontiguousarray(batch, np.float32).tobytes())
    return digest.hexdigest()[:16]


def quantize(xml: Path, batch: np.ndarray, into: Path) -> None:
    """The float32 OpenVINO model `xml` quantised to int8 on `batch` (the model's inputs, a row each), saved as
    `into`/model.xml. NNCF's progress bars and logs are kept off stdout (stdout is for data)."""
    if not errors.installed("nncf"):  # checked when the run starts too (runtime.choose); this for a direct caller
        raise ExplainError(f"--precision int8 needs NNCF, OpenVINO's quantisation: {EXTRA}")
    openvino = backend.openvino_quietly()
    with _quiet_nncf() as nncf:
        rows = [np.ascontiguousarray(row[None], np.float32) for row in batch]
        quantized = nncf.quantize(openvino.Core().read_model(str(xml)), nncf.Dataset(rows), subset_size=len(rows),
                                  fast_bias_correction=False)  # full bias correction: on the tests' shapes
        # model the activations' mean error fell from 33 % to 6 % of their size (the fast one)
    into.mkdir(parents=True, exist_ok=True)
    openvino.save_model(quantized, str(into / "model.xml"), compress_to_fp16=False)


@contextlib.contextmanager
def _quiet_nncf() -> Any:
    """NNCF imported and run with its logger at errors, its progress bars (rich, on stdout) sent nowhere."""
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), backend.without(backend.TELEMETRY):
        import nncf

        logger = logging.getLogger("nncf")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield nncf
        finally:
            logger.setLevel(level)
