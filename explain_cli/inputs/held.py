"""A model of several inputs: the inputs held as given while one is explained.

One input is explained (a picture, mapped); every other input of the model takes each example's own value, held
fixed: numbers (a vector, a table's row), an array, or another picture. Each example carries its held items on its
Source; the pipeline reads them when it reads the example (a bad one fails that example alone, naming the input),
and hands the batch's values to the compiled steps through `batch` while it computes, so that every step, method
and metric runs the model on them without knowing they are there.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from explain_cli.errors import BadInput

if TYPE_CHECKING:  # numpy is imported when examples are read: the command line's help loads none of it
    import numpy as np


@dataclass(frozen=True)
class HeldInput:
    """One of the model's inputs held as given: its name, its shape without the batch axis (a picture's as it is fed,
    (height, width, channels)), and whether it is a picture (decoded, resized and preprocessed as the explained one
    is) or values fed as they stand."""

    name: str
    shape: tuple[int, ...]
    image: bool

    def describe(self) -> str:
        return f"{self.name} {'(a picture of ' if self.image else '(values of shape '}{self.shape})"


def held_input(where: str, name: str, shape: Sequence[Any], shown: str, nchw: bool = False) -> HeldInput:
    """A model's input held as given, from its `shape` without the batch axis: a picture (rank 3) as it is fed,
    (h, w, c) (from (c, h, w) where the model takes `nchw`), values as they are; ExplainError naming `where` (the
    model) for a shape not fixed (`shown`: the whole shape, as the model gives it)."""
    from explain_cli.errors import ExplainError

    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise ExplainError(f"{where}: input {name} has no fixed shape, {shown}: explain holds each example's value for "
                           "it")
    dims = tuple(int(d) for d in shape)
    image = len(dims) == 3
    return HeldInput(name, (dims[1], dims[2], dims[0]) if image and nchw else dims, image)


@dataclass(frozen=True)
class Held:
    """An example's items for the held inputs, in the model's order: a path, an array or numbers each."""

    inputs: tuple[HeldInput, ...]
    items: tuple[Any, ...]


_CURRENT: contextvars.ContextVar[tuple[np.ndarray, ...] | None] = contextvars.ContextVar("held", default=None)


@contextlib.contextmanager
def batch(values: tuple[np.ndarray, ...] | None) -> Iterator[None]:
    """The held inputs' values (b, ...) each of the batch being computed, for the steps run meanwhile."""
    token = _CURRENT.set(values)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def row(i: int) -> Iterator[None]:
    """Image i's held values alone: its perturbed copies run with them (a forward pass repeats them to its rows)."""
    values = _CURRENT.get()
    with batch(None if values is None else tuple(v[i:i + 1] for v in values)):
        yield


def current() -> tuple[np.ndarray, ...]:
    """The held values of the batch being computed; () for a model of one input."""
    return _CURRENT.get() or ()


def stacked(examples: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...] | None:
    """A batch's held values, input by input, from each example's; None where there are none."""
    import numpy as np

    if not examples or not examples[0]:
        return None
    return tuple(np.stack([values[j] for values in examples]) for j in range(len(examples[0])))


def read(held: Held, shown: str, max_pixels: int, resize: str) -> tuple[np.ndarray, ...]:
    """An example's held values as its model takes them: pictures decoded and fitted (uint8 pixels), values as
    float32 of the input's shape; BadInput naming the example, the input and what it expected."""
    return tuple(_picture(item, spec, shown, max_pixels, resize) if spec.image else values_of(item, spec, shown)
                 for spec, item in zip(held.inputs, held.items))


def values_of(item: Any, spec: HeldInput, shown: str) -> np.ndarray:
    """A held input's numbers: an array, a list, a .npy path, or text of numbers split by spaces, commas or
    semicolons; float32 of the input's shape."""
    import numpy as np

    try:
        if isinstance(item, (str, Path)) and str(item).lower().endswith(".npy"):
            value = np.load(item, allow_pickle=False)
        elif isinstance(item, str):
            value = np.array([float(v) for v in item.replace(",", " ").replace(";", " ").split()], np.float32)
        else:
            value = np.asarray(item, np.float32)
    except (OSError, ValueError, TypeError) as error:
        raise BadInput(shown, f"input {spec.name}: not numbers: {error}") from None
    value = np.asarray(value, np.float32)
    if value.size != int(np.prod(spec.shape)):
        raise BadInput(shown, f"input {spec.name}: {value.size} values of shape {value.shape}; the model takes "
                       f"{spec.shape}")
    if not np.isfinite(value).all():
        raise BadInput(shown, f"input {spec.name}: holds NaN or infinite values")
    return value.reshape(spec.shape)


def _picture(item: Any, spec: HeldInput, shown: str, max_pixels: int, resize: str) -> np.ndarray:
    from explain_cli.inputs import sources

    source = sources.file_source(str(item)) if isinstance(item, (str, Path)) else sources.memory_source(item, 0,
                                                                                                        "pixels")
    height, width, channels = spec.shape
    try:
        _, x = sources.decode_for(source, max_pixels, width, height, channels, resize)
    except BadInput as error:
        raise BadInput(shown, f"input {spec.name}: {error}") from None
    return x
