"""The two ways a run can fail short of a bug, each printed as one line, and the one line of a library's error (and of a
model that fails as it runs); the checks every argument goes through where it enters (choose, whole, between); and
whether an optional extra is installed, with the line that installs it (its absence is an error the user can act on).
"""

import importlib.util
import math
import numbers
import re
import warnings
from typing import Any, Callable, Iterable


class ExplainError(Exception):
    """A run-time failure the user can act on (exit 1): bad model file, no network."""


class BadArgument(ExplainError):
    """An argument that cannot be used: a class the model does not have, a layer it cannot cut at. The command line
    shows it as a usage error of `option` (exit 2); None: of the command as a whole."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(message)
        self.option = option


class BadInput(ExplainError):
    """One input image could not be used; the batch goes on without it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def choose(option: str | None, name: str, value: object, allowed: Iterable[object]) -> None:
    """BadArgument unless `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        shown = ", ".join(str(a) for a in allowed if a is not None)
        raise BadArgument(option, f"{name} is one of {shown}, not {value!r}")


def whole(option: str | None, name: str, value: object, least: int) -> None:
    """BadArgument unless `value` is a whole number of at least `least`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise BadArgument(option, f"{name} is a whole number ≥ {least}, not {value!r}")


def between(option: str | None, name: str, value: object, low: float, high: float | None) -> None:
    """BadArgument unless `value` is a finite number in [low, high] (no upper bound where high is None)."""
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and low <= number <= (math.inf if high is None else high)):
        bound = f"between {low:g} and {high:g}" if high is not None else f"≥ {low:g}"
        raise BadArgument(option, f"{name} is a number {bound}, not {value!r}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPERS = ("Exception encountered when calling", "Graph execution error", "in user code:")


def installed(*modules: str) -> bool:
    """Whether every one of the (top-level) modules can be imported, found without importing it."""
    try:
        return all(importlib.util.find_spec(module) is not None for module in modules)
    except ValueError:  # put in sys.modules as None: blocked from importing
        return False


def install(extra: str) -> str:
    """The command that installs an extra."""
    return f"pip install 'explain-cli[{extra}]'"


def first_line(error: BaseException) -> str:
    """The first line of an error's message that says something: past the lines Keras and TensorFlow wrap a
    layer's own error in ("Exception encountered when calling X.call()"), without terminal colours."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_WRAPPERS)]
    return lines[0] if lines else type(error).__name__


# The lines TensorFlow frames a failing node's own message with.
_TENSORFLOW_FRAMING = ("Traceback", "Detected at node", "Graph execution error")


def model_failure(error: BaseException) -> str | None:
    """One line for an error TensorFlow raised while running the model's graph (None for any other error): the last
    unindented line of its message, which TensorFlow puts after the stack where the failing node was made."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    lines = [_ANSI.sub("", line).rstrip() for line in str(error).splitlines()]
    said = [line for line in lines if line and not line[0].isspace() and not line.startswith(_TENSORFLOW_FRAMING)]
    return said[-1] if said else type(error).__name__


def out_of_memory(error: BaseException) -> bool:
    """Whether an error says memory ran out (Python's, or TensorFlow's ResourceExhaustedError)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"


class StepError(RuntimeError):
    """explain's own compiled step failed on a batch the model alone runs: a bug of explain's, never filed as a bad
    image, shown with its traceback."""


def blamed(step: Callable[[Any, Any], Any], forward: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """A compute step whose TensorFlow failure is filed by what failed: where the model alone (`forward`) fails on the
    batch too, the model's own error (its images' one line each); where the model runs, StepError (a bug)."""

    def run(batch: Any, sources: Any) -> Any:
        try:
            return step(batch, sources)
        except Exception as error:
            if model_failure(error) is None or out_of_memory(error):
                raise
            forward(batch)  # the model's own failure propagates as TensorFlow raised it
            raise StepError(f"explain's step failed on a batch the model itself runs: {first_line(error)}") from error

    return run


Listener = Callable[[str, bool], None]  # a note as it comes, and whether it is a warning


class Notes(list[str]):
    """How a model was made and runs, line by line, for --verbose: some come later than the model (a runtime's pass,
    converted when a step first needs it), so a listener hears each as it comes. A warning (a runtime asked for by
    name that cannot run a pass) with no one listening is a Python warning."""

    def __init__(self, listener: Listener | None = None) -> None:
        super().__init__()
        self.listener = listener

    def add(self, line: str, warning: bool = False) -> None:
        self.append(line)
        if self.listener is not None:
            self.listener(line, warning)
        elif warning:
            warnings.warn(line, RuntimeWarning, stacklevel=3)
