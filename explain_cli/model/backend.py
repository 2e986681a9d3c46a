"""The one place TensorFlow and Keras are imported (and OpenVINO, without its telemetry).

As a library, explain changes nothing global: it imports TensorFlow and Keras (on Keras' TensorFlow backend, which it
needs), and leaves the environment, Keras' settings and the loggers as the user had them. The command line's own
process is quieted first (`quiet_process`): TensorFlow's C++ start-up lines, absl's and Keras' progress output,
and glibc's malloc arenas, as measured below.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from types import ModuleType
from typing import Iterator, Sequence

from explain_cli.errors import ExplainError

_quiet = False  # set by quiet_process: this process is the command line's own


def load_tensorflow() -> tuple[ModuleType, ModuleType]:
    """Import (tensorflow, keras) on Keras' TensorFlow backend; cheap after the first call. A Keras already imported on
    another backend (JAX, PyTorch, numpy) is an ExplainError: explain needs TensorFlow's gradients."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        _check_backend(keras)
    else:
        # Keras reads its backend once, at import: this import is on TensorFlow whatever keras.json says; the variable
        # is put back after, so the user's environment is as it was.
        saved = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "tensorflow"
        try:
            with native_stderr_silenced(), without(_KERAS_EXTRAS if _quiet else ()):
                import keras
        finally:
            if saved is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = saved
        _check_backend(keras)
    with native_stderr_silenced():  # TensorFlow's C++ start-up lines (oneDNN, CUDA stubs), written at import
        import tensorflow as tf
    if _quiet:
        _quiet_loggers(tf, keras)
    return tf, keras


def _check_backend(keras: ModuleType) -> None:
    backend = keras.config.backend()
    if backend != "tensorflow":
        raise ExplainError(f"explain needs Keras' TensorFlow backend, and this Keras runs {backend}: set "
                           "KERAS_BACKEND=tensorflow before Keras is first imported")


def quiet_process() -> None:
    """Quiet the command line's own process, before TensorFlow loads: its C++ log lines, absl's warnings, Keras'
    progress bars on stdout (stdout is for data); and cap malloc's arenas. Cheap: nothing is imported here."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    os.environ["KERAS_BACKEND"] = "tensorflow"  # this process's Keras, whatever keras.json says
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _limit_malloc_arenas()


def _quiet_loggers(tf: ModuleType, keras: ModuleType) -> None:
    """In the command line's process, once TensorFlow is imported: Python-side logs to errors only, and Keras'
    download progress off stdout (it goes to absl, on stderr)."""
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    keras.config.disable_interactive_logging()


# What Keras imports at start-up for its optional integrations, each behind `except ImportError`: pandas DataFrames,
# scikit-learn wrappers, matplotlib galleries. The command line uses none of them; not importing them took TensorFlow
# and Keras' import from 4.3 to 3.0 s here (scikit-learn alone, where installed, 0.76 s).
_KERAS_EXTRAS = ("pandas", "sklearn", "matplotlib.pyplot")


class _Refused:
    """An import hook that makes the modules it names (and their submodules) look absent."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if any(name == refused or name.startswith(refused + ".") for refused in self.names):
            raise ImportError(f"{name} is not imported by explain here")
        return None


@contextlib.contextmanager
def without(names: Sequence[str]) -> Iterator[None]:
    """Modules not yet imported look absent for a while (a module already imported is left as it is); nothing of them
    is left in sys.modules, so importing them later works as ever."""
    hook = _Refused([n for n in names if n not in sys.modules])
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        sys.meta_path.remove(hook)


TELEMETRY = ("openvino_telemetry",)


def openvino_quietly() -> ModuleType:
    """OpenVINO, imported without its telemetry: where `openvino_telemetry` is importable, OpenVINO's converter (and
    NNCF) send usage events unless the user declined in a consent file, each from a forked copy of the whole process
    that waits on the network (on a machine without it, every conversion left a stuck copy of a 5 GB process). explain
    sends nothing on its users' behalf. Where OpenVINO was imported before, it is left as it is."""
    with without(TELEMETRY):
        import openvino
    return openvino


# glibc's mallopt parameter number for the arena limit (malloc.h).
M_ARENA_MAX = -8


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before TensorFlow and our pools start their threads.

    By default each thread that meets a locked arena gets its own (up to 8 per core), and each arena
    keeps its own peak of freed multi-megabyte image buffers, so peak memory crept up with the length
    of a run. Measured with ResNet50 on 2 cores: peak RSS over 2,000 images (sampled every 2 s)
    1,719 -> 1,592 MiB, no slower. Elsewhere (macOS, musl) there is no such knob and nothing happens.
    """
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a while.

    TensorFlow's C++ start-up lines (oneDNN, CUDA stubs) are written before absl logging is set up,
    so TF_CPP_MIN_LOG_LEVEL cannot stop them; only the descriptor can.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
