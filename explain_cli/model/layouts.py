"""Which of a Keras graph's image-like values are channels-first, (batch, channels, height, width).

A model built with `data_format="channels_first"` (one converted from PyTorch, say) takes, makes and outputs
NCHW tensors. explain's methods see every feature map, input and per-pixel output as (batch, height, width,
channels): the graph replays its steps on the model's own layout and transposes where a value enters or leaves
(model/graph.Graph.feed and .value), so no layer is rebuilt.

A value's layout is read from the graph: a layer with a `data_format` makes its outputs in it; a Permute (or
keras.ops.transpose) that moves the channels first or last says so; any other layer keeps its first input's layout.
The model's input is channels-first where the first layer with a `data_format` it reaches (through layers that keep
the layout) says channels_first, or where a transpose moving the channels last reaches it first.
"""

from __future__ import annotations

from typing import Any, Sequence

_FIRST, _LAST, _AS_INPUT = "first", "last", "input"
_TO_FIRST, _TO_LAST = (0, 3, 1, 2), (0, 2, 3, 1)


def channels_first(steps: Sequence[Any], input_number: int, input_rank: int) -> frozenset[int]:
    """The value numbers of the graph's 4-D values that are NCHW (the input's among them where it is)."""
    layout: dict[int, str] = {input_number: _AS_INPUT}
    input_layout: str | None = None
    for step in steps:
        first = next((layout.get(number, _LAST) for _, number in step.inputs), _LAST)
        made = _made(step.layer, first)
        if input_layout is None and first == _AS_INPUT:
            input_layout = _input_layout(step.layer)
        for number, shape in zip(step.outputs, step.output_shapes):
            layout[number] = made if len(shape) == 4 else _LAST
    if input_rank != 4:
        input_layout = _LAST
    resolved = {n: (input_layout or _LAST) if kind == _AS_INPUT else kind for n, kind in layout.items()}
    return frozenset(n for n, kind in resolved.items() if kind == _FIRST)


def _input_layout(layer: Any) -> str | None:
    """What the first layer reading the input says of it: its data_format, or a transpose that moves the channels."""
    if _says(layer):
        return _FIRST if layer.data_format == "channels_first" else _LAST
    order = _permutation(layer)
    return _FIRST if order == _TO_LAST else _LAST if order == _TO_FIRST else None


def _says(layer: Any) -> bool:
    return isinstance(getattr(layer, "data_format", None), str)


def _made(layer: Any, first: str) -> str:
    """The layout of what `layer` makes from an input in layout `first`."""
    if _says(layer):
        return _FIRST if layer.data_format == "channels_first" else _LAST
    order = _permutation(layer)
    if order == _TO_FIRST:
        return _FIRST
    if order == _TO_LAST:
        return _LAST
    return first if order is None else _LAST


def _permutation(layer: Any) -> tuple[int, ...] | None:
    """The axes a Permute layer or a transpose op orders its input by, the batch axis included; None for others."""
    kind = type(layer).__name__
    if kind == "Permute":
        return (0, *(int(d) for d in layer.dims))
    if kind == "Transpose" and getattr(layer, "axes", None) is not None:
        return tuple(int(a) for a in layer.axes)
    return None


def is_layout_only(layer: Any) -> bool:
    """A step that only moves the channels first or last: it leaves what a pixel's scores are unchanged."""
    return _permutation(layer) in (_TO_FIRST, _TO_LAST)


def to_last(x: Any) -> Any:
    """(b, c, h, w) -> (b, h, w, c)."""
    import tensorflow as tf

    return tf.transpose(x, _TO_LAST)


def to_first(x: Any) -> Any:
    """(b, h, w, c) -> (b, c, h, w)."""
    import tensorflow as tf

    return tf.transpose(x, _TO_FIRST)


def last_shape(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    """A channels-first shape without its batch axis, (c, h, w), as (h, w, c)."""
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape
