"""A compiled step of a model of several inputs: it takes the held inputs' values after its own arguments, and every
forward pass it traces feeds them to the graph (model/graph.holding). Callers never pass them: the step reads the
batch's values the pipeline holds (inputs/held.batch) each time it is called."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from explain_cli.inputs import held
from explain_cli.model import graph as graph_module


def specs(model: Any) -> list[Any]:
    """The held inputs' tensor specs: a picture's uint8 pixels (b, h, w, c), values as float32 of their shape."""
    import tensorflow as tf

    return [tf.TensorSpec([None, *given.shape], tf.uint8 if given.image else tf.float32) for given in model.held]


def prepared(model: Any, values: Sequence[Any]) -> list[Any]:
    """The held values as the model takes them: pictures preprocessed as the explained input's are."""
    import tensorflow as tf

    return [model.preprocess(tf.cast(value, tf.float32)) if given.image else value
            for given, value in zip(model.held, values)]


def holding_step(function: Callable[..., Any], signature: list[Any], model: Any,
                 compile_: Callable[[Callable[..., Any], list[Any]], Any]) -> Any:
    """`function` compiled (by `compile_`) over `signature` and the held inputs, called with the batch's held values."""
    count = len(model.held)

    def with_held(*arguments: Any) -> Any:
        own, given = arguments[:-count], arguments[-count:]
        with graph_module.holding(prepared(model, given)):
            return function(*own)

    return HeldStep(compile_(with_held, [*signature, *specs(model)]))


class HeldStep:
    """A compiled step that appends the batch's held values to each call; anything else is the tf.function's."""

    def __init__(self, step: Any) -> None:
        self.step = step

    def __call__(self, *arguments: Any) -> Any:
        values = held.current()
        if not values:
            from explain_cli.errors import ExplainError

            raise ExplainError("the model has several inputs: run it on examples that give every input")
        return self.step(*arguments, *values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.step, name)


@contextlib.contextmanager
def watched(model: Any, k: int) -> Iterator[Any]:
    """A tape watching the held inputs of values while a step of one row per image runs, so that their gradients
    come from the step's own pass (None: none to watch, or k rows per image, where one image's rows share them)."""
    import tensorflow as tf

    values = [value for value, given in zip(graph_module.held_now(), model.held) if not given.image]
    if k != 1 or not values:
        yield None
        return
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(values)
        yield tape


def attributions(model: Any, forward: Callable[[Any], Any], x: Any, score: Callable[[Any], Any], k: int,
                 b: Any, taped: tuple[Any, Any] = (None, None)) -> dict[str, Any]:
    """Each held input of values' attribution for each row, gradient × input, ∂S/∂v ⊙ v (b, k, *shape), keyed
    "attribution:<input>": from the step's own pass where `taped` (a tape from `watched`, the rows' scores) has it,
    else by one more pass of the whole model (`forward`: the model's input -> its scores) on the k copies. A held
    picture gets none: it is explained on its own, as the explained input."""
    import tensorflow as tf

    from explain_cli.steps.rows import per_image, tile

    wanted = [i for i, given in enumerate(model.held) if not given.image]
    if not wanted:
        return {}
    tape, scores = taped
    if tape is not None:
        values = [graph_module.held_now()[i] for i in wanted]
        return {f"attribution:{model.held[i].name}": per_image(gradient * value, 1, b)
                for i, gradient, value in zip(wanted, tape.gradient(scores, values), values)}
    tiled = [tile(value, k) for value in graph_module.held_now()]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([tiled[i] for i in wanted])
        with graph_module.holding(tiled):
            scores = score(tf.cast(forward(tile(x, k)), tf.float32))
    gradients = tape.gradient(scores, [tiled[i] for i in wanted])
    return {f"attribution:{model.held[i].name}": per_image(gradient * tiled[i], k, b)
            for i, gradient in zip(wanted, gradients)}
