"""Trained fixtures: made once, deterministically, in a child process, and cached on disk by the code that makes them.

A child process trains each model with every seed fixed, TensorFlow's op determinism on, one thread, and oneDNN held
to AVX2 kernels (ONEDNN_MAX_CPU_ISA), so that the same model comes out run after run, and as nearly the same as
floating point allows on any x86-64 CPU. Each recipe checks what it made (a fixture that trained badly fails here,
loudly, not as some method's test) and writes its files under a name that hashes this file, synthetic.py and the
TensorFlow and Keras versions: change any of them and the model is made again.

    python -m tests.trained KIND FOLDER      # what the test session runs, one child per kind, all at once
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
# The environment a child trains in: set before TensorFlow is imported.
ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONHASHSEED": "0", "TF_DETERMINISTIC_OPS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


@dataclass(frozen=True)
class Recipe:
    files: tuple[str, ...]  # what it writes into its folder
    make: Callable[[object, Path], str]  # (keras, folder) -> a line saying how good the model is; raises if it is not


def _tiny(keras, folder: Path) -> str:
    from tests import synthetic

    return synthetic.train_tiny_model(keras, folder / "tiny.keras")


def _shapes(keras, folder: Path) -> str:
    from tests import synthetic

    report = synthetic.train_shapes_model(keras, folder / "shapes_none.keras")
    for mode in ("caffe", "tf", "torch"):
        synthetic.preprocessed_twin(keras, folder / "shapes_none.keras", mode, folder / f"shapes_{mode}.keras")
    return report


def _marks(keras, folder: Path) -> str:
    from tests import synthetic

    return synthetic.train_marks_model(keras, folder / "marks.keras")


def _multilabel(keras, folder: Path) -> str:
    from tests import synthetic

    return synthetic.train_multilabel_model(keras, folder / "multilabel.keras")


def _segmenter(keras, folder: Path) -> str:
    from tests import synthetic

    return synthetic.train_segmenter(keras, folder / "segmenter.keras")


def _detector(keras, folder: Path) -> str:
    from tests import synthetic_detector

    return synthetic_detector.train(keras, folder / "detector.keras")


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(("tiny.keras",), _tiny),
    "shapes": Recipe(tuple(f"shapes_{m}.keras" for m in ("none", "caffe", "tf", "torch")), _shapes),
    "marks": Recipe(("marks.keras",), _marks),
    "multilabel": Recipe(("multilabel.keras",), _multilabel),
    "segmenter": Recipe(("segmenter.keras",), _segmenter),
    "detector": Recipe(("detector.keras",), _detector),
}


def key(kind: str) -> str:
    """What a kind's models depend on: the code that makes them and the versions that run it."""
    digest = hashlib.sha1(kind.encode())
    for path in (HERE / "trained.py", HERE / "synthetic.py", HERE / "synthetic_detector.py"):
        digest.update(path.read_bytes())
    for package in ("tensorflow", "keras"):
        digest.update(metadata.version(package).encode())
    return f"{kind}-{digest.hexdigest()[:12]}"


class Trainer:
    """Starts the children for every kind a session needs at once, and hands out their folders when done."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._running: dict[str, subprocess.Popen] = {}

    def folder(self, kind: str) -> Path:
        return self.cache / key(kind)

    def start(self, kinds: list[str]) -> None:
        for kind in kinds:
            folder = self.folder(kind)
            if kind in self._running or all((folder / f).is_file() for f in RECIPES[kind].files):
                continue
            env = {**os.environ, **ENVIRONMENT}
            self._running[kind] = subprocess.Popen(
                [sys.executable, "-m", "tests.trained", kind, str(folder)], cwd=HERE.parent, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(self, kind: str) -> Path:
        """The folder holding the kind's files, waiting for its child; the child's complaint if it failed."""
        self.start([kind])
        process = self._running.pop(kind, None)
        if process is not None:
            out, err = process.communicate(timeout=1200)
            if process.returncode != 0:
                raise RuntimeError(f"the trained fixture {kind!r} could not be made:\n{err.strip()[-3000:]}")
            sys.stderr.write(out)
        return self.folder(kind)


def main(kind: str, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # sessions running at once (pytest-xdist's workers) train each kind once
        if all((folder / f).is_file() for f in RECIPES[kind].files):
            return
        import tensorflow as tf
        import keras

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
        keras.config.disable_interactive_logging()
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        partial.mkdir(parents=True, exist_ok=True)
        report = RECIPES[kind].make(keras, partial)  # raises (a non-zero exit) if the model is not good enough
        if folder.exists():  # left incomplete by a child that was killed
            shutil.rmtree(folder)
        partial.rename(folder)
    print(f"trained fixture {kind}: {report}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
