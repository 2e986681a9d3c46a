"""A Keras model as a list of steps: its functional graph flattened, nested models entered.

Each step is one layer call reading and writing numbered values, so any subset of the steps can be replayed in
order: the whole model, the part before a cut, the part after it (model/cut.py). A subclassed model is one step; the
layer outputs inside steps (sublayers of subclassed layers) are found by model/sublayers.py and listed as the graph's points.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from explain_cli.errors import ExplainError
from explain_cli.inputs.held import HeldInput, held_input

Tensor = Any  # a tf.Tensor; kept abstract so this module imports without TensorFlow


@dataclass(frozen=True)
class Step:
    """One layer call of the flattened graph, reading and writing numbered values."""

    name: str  # qualified: "resnet50/conv5_block3_out" inside a nested model
    layer: Any
    arguments: Any  # the call's structure (Keras' SymbolicArguments), filled in at run time
    inputs: tuple[tuple[int, int], ...]  # (id of the Keras tensor in `arguments`, value number)
    outputs: tuple[int, ...]
    output_shapes: tuple[tuple[int | None, ...], ...]
    takes_training: bool
    hooks: tuple[tuple[tuple[str, ...], Any], ...] = ()  # (sublayer path, layer -> inner.Wrapper) while it runs

    def run(self, values: dict[int, Tensor]) -> None:
        args, kwargs = self.arguments.fill_in({key: values[v] for key, v in self.inputs})
        if self.takes_training:
            kwargs["training"] = False
        if self.hooks:
            from explain_cli.model import sublayers as inner

            sublayers = [(inner.sublayer(self.layer, path), make) for path, make in self.hooks]
            with inner.intercepted([(layer, make(layer)) for layer, make in sublayers]):
                result = self.layer(*args, **kwargs)
        else:
            result = self.layer(*args, **kwargs)
        if isinstance(result, (dict, list, tuple)):  # a dict (keras-hub's feature pyramid) or nested structures
            from keras import tree  # (D-FINE's decoder): in Keras' flat order, its node's outputs' order

            result = tree.flatten(result)
        results = result if isinstance(result, list) else [result]
        for number, value in zip(self.outputs, results):
            values[number] = value


@dataclass(frozen=True)
class Graph:
    """A model as a topologically ordered list of steps from one input to one output, and every layer output
    that can be cut at (model/sublayers.py: sublayers of subclassed layers included)."""

    steps: tuple[Step, ...]
    input: int
    output: int | None  # the output explained (None: the model has several, and none was chosen)
    precision: str = "fp32"  # "bf16": run in bfloat16 (model/precision.py): a cut's feature part, or a whole forward pass
    points: tuple[Any, ...] = ()  # inner.Point, in the order a forward pass finishes them
    foldable: bool = True  # False: weights will change after compiling (--sanity), so fold nothing (model/folding.py)
    transformer_default: str | None = None  # the input of the last transformer block, where there is one
    notes: tuple[str, ...] = ()  # how its layers were found, for --verbose
    outputs: tuple[tuple[str, int], ...] = ()  # every output of the model: its name and value number
    offload: Any = None  # offload.Offload: the runtime its forward-only passes run on (None: TensorFlow)
    channels_first: frozenset[int] = frozenset()  # the values held NCHW by the model (model/layouts.py)
    held: tuple[int, ...] = ()  # a model of several inputs: the value numbers of those held as given (inputs/held.py)
    folded: dict[tuple[int, int], Any] = field(default_factory=dict, compare=False, repr=False)  # folded layers
    # by their layer's and BatchNorm's ids, made once for every graph replaced from this one (model/folding.py)

    def feed(self, x: Tensor) -> dict[int, Tensor]:
        """The values a run starts from: the input x (b, h, w, c), in the model's own layout, and the inputs held as
        given, each example's repeated to x's rows (copy j of example i at j·b + i, as steps tile)."""
        values = {self.input: self.given(self.input, x)}
        if self.held:
            import tensorflow as tf

            rows = tf.shape(x)[0]
            for number, value in zip(self.held, _HOLDING.get()):
                values[number] = self.given(number, repeated(value, rows // tf.shape(value)[0]))
        return values

    def given(self, number: int, x: Tensor) -> Tensor:
        """A value handed to the graph as (b, h, w, c), in the layout the model holds it in."""
        if number not in self.channels_first:
            return x
        from explain_cli.model.layouts import to_first

        return to_first(x)

    def value(self, values: dict[int, Tensor], number: int) -> Tensor:
        """A value of a run as a method sees it: a feature map or per-pixel output (b, h, w, c)."""
        if number not in self.channels_first:
            return values[number]
        from explain_cli.model.layouts import to_last

        return to_last(values[number])

    def with_output(self, name: str) -> Graph:
        """The graph explained through the output called `name`."""
        from explain_cli.errors import BadArgument

        found = [number for output, number in self.outputs if output == name]
        if not found:
            raise BadArgument("--output", f"unknown output {name!r}; the model's outputs: {self.output_names()}")
        return dataclasses.replace(self, output=found[0])

    def output_names(self) -> str:
        return ", ".join(name for name, _ in self.outputs) or "one, unnamed"

    def chosen_output(self) -> int:
        """The output explained; BadArgument when the model has several and none was chosen."""
        if self.output is None:
            from explain_cli.errors import BadArgument

            raise BadArgument("--output", f"the model has {len(self.outputs)} outputs: choose one with --output "
                              f"NAME ({self.output_names()})")
        return self.output

    def explainable(self) -> list[Any]:
        """The layer outputs a method can use: feature maps and tokens on a grid, at any depth."""
        return [p for p in self.points if p.explainable]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def find(self, name: str) -> Any:
        """The layer output (inner.Point) called `name`: its path (`resnet50/conv5_block3_out`,
        `vi_t_backbone/vit_encoder/transformer_block_3`) or its own name, if unambiguous."""
        exact = [p for p in self.points if p.name == name]
        short = [p for p in self.points if p.name.rsplit("/", 1)[-1] == name]
        tail = [p for p in self.points if p.name.endswith("/" + name)]
        hits = exact or short or tail
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(p.name for p in hits[:6]) + (", ..." if len(hits) > 6 else "")
            raise ExplainError(f"layer {name!r} is ambiguous: it matches {names}; name it by its path")
        raise ExplainError(self._unknown_layer_message(name))

    def _unknown_layer_message(self, name: str) -> str:
        names = [p.name for p in self.explainable()]
        short = {n.rsplit("/", 1)[-1]: n for n in names}
        close = set(difflib.get_close_matches(name, names, n=3, cutoff=0.6))
        close |= {short[n] for n in difflib.get_close_matches(name, list(short), n=3, cutoff=0.6)}
        hint = f"did you mean {', '.join(n for n in names if n in close)}? " if close else ""
        return f"unknown layer {name!r}: {hint}last explainable layers: {', '.join(names[-5:])} (see `explain layers`)"

    def run(self, steps: Sequence[Step], values: dict[int, Tensor]) -> dict[int, Tensor]:
        for step in steps:
            step.run(values)
        return values


def repeated(value: Tensor, copies: Any) -> Tensor:
    """`copies` copies of a batch along its first axis, copy j of row i at j·b + i (an int or a scalar tensor)."""
    import tensorflow as tf

    return tf.tile(value, tf.concat([[copies], tf.ones([tf.rank(value) - 1], tf.int32)], 0))


@contextlib.contextmanager
def holding(values: Sequence[Tensor]) -> Iterator[None]:
    """The held inputs' values while a step is traced: every `feed` inside takes them (inputs/held.py)."""
    token = _HOLDING.set(tuple(values))
    try:
        yield
    finally:
        _HOLDING.reset(token)


def held_now() -> tuple[Tensor, ...]:
    """The held inputs' values of the step being traced; () for a model of one input."""
    return _HOLDING.get()


_HOLDING: contextvars.ContextVar[tuple[Tensor, ...]] = contextvars.ContextVar("holding", default=())


def flatten(model: Any, output: str | None = None, input_name: str | None = None) -> Graph:
    """The model's call graph as steps, entering nested functional and Sequential models. A model with several
    outputs is explained through one of them, named by `output` (a graph without one can list its layers); a model
    of several inputs through one of them, `input_name` (default: its first picture), the others held as given."""
    function = _functional(model)
    if function is None:
        return _whole(model)
    explained = explained_input(function, input_name)
    numbers = itertools.count()
    input_numbers = [next(numbers) for _ in function.inputs]
    input_number = input_numbers[explained]
    steps: list[Step] = []
    values = _flatten_into(function, input_numbers, "", steps, numbers)
    names = _output_names(function)
    from explain_cli.model import sublayers as inner

    from explain_cli.model import layouts

    shape = tuple(function.inputs[explained].shape)
    first = layouts.channels_first(steps, input_number, len(shape))
    found = inner.catalogue(model, steps, input_number, shape, probe=len(input_numbers) == 1)
    points = tuple(_in_last(p, steps, first) for p in found.points) if first else found.points
    graph = Graph(steps=tuple(steps), input=input_number, output=values[0] if len(values) == 1 else None,
                  points=points, transformer_default=found.transformer_default, notes=found.notes(),
                  outputs=tuple(zip(names, values)), channels_first=first,
                  held=tuple(n for n in input_numbers if n != input_number))
    return graph.with_output(output) if output is not None else graph


def held_inputs(model: Any, spec: str, graph: Any) -> tuple[HeldInput, ...]:
    """A model of several inputs: those held as given, in its order; ExplainError for one of no fixed shape."""
    if not graph.held:
        return ()
    function = _functional(model)
    return tuple(held_input(spec, name, tuple(tensor.shape[1:]), str(tuple(tensor.shape)))
                 for i, (name, tensor) in enumerate(zip(input_names(model), function.inputs)) if i != graph.input)


def input_names(model: Any) -> list[str]:
    """A functional model's inputs' names, in its order ([] for a subclassed model)."""
    function = _functional(model)
    return [] if function is None else [_input_name(t) for t in function.inputs]


def _input_name(tensor: Any) -> str:
    return str(getattr(tensor, "name", None) or tensor._keras_history.operation.name)


def explained_input(function: Any, name: str | None) -> int:
    """Which of a model's inputs is explained: the one named, else the first of rank 4 (a picture), else the first;
    BadArgument for a name it does not have."""
    names = [_input_name(t) for t in function.inputs]
    if name is not None:
        if name not in names:
            from explain_cli.errors import BadArgument

            raise BadArgument("--input", f"unknown input {name!r}; the model's inputs: {', '.join(names)}")
        return names.index(name)
    return next((i for i, t in enumerate(function.inputs) if len(t.shape) == 4), 0)


def _in_last(point: Any, steps: Sequence[Step], first: frozenset[int]) -> Any:
    """A step's layer output as a method sees it: (h, w, c) where the model holds it channels-first."""
    from explain_cli.model.layouts import last_shape

    step = next((s for s in steps if s.name == point.step), None)
    if point.path or step is None or len(step.outputs) != 1 or step.outputs[0] not in first:
        return point
    return dataclasses.replace(point, shape=last_shape(point.shape))


def _output_names(function: Any) -> list[str]:
    """The outputs' names: a dict of outputs' keys (in Keras' flat order, which is its outputs' order), else the
    model's output names."""
    from keras import tree

    struct = getattr(function, "_outputs_struct", None)
    if isinstance(struct, dict):
        return [str(key) for key in tree.flatten({key: key for key in struct})]
    return list(getattr(function, "output_names", None) or [t._keras_history.operation.name for t in function.outputs])


class _InputAlone:
    """The call arguments of a step that takes the model's input alone: a subclassed model, run whole."""

    keras_tensors: tuple = ()

    def fill_in(self, values: dict) -> tuple[tuple, dict]:
        return (values[0],), {}


def _whole(model: Any) -> Graph:
    """A subclassed model as one step; its layers are cut while it runs (model/sublayers.py)."""
    from explain_cli.model import sublayers as inner

    shape = input_shape_of(model)
    step = Step(name=model.name, layer=model, arguments=_InputAlone(), inputs=((0, 0),), outputs=(1,),
                output_shapes=((None, None),), takes_training=_takes_training(model))
    found = inner.catalogue(model, [step], 0, shape)
    classes = found.points[-1].shape if found.points else ()
    if len(classes) != 1:
        raise ExplainError(f"model {model.name!r} is a subclassed model whose output is not (batch, classes)")
    step = dataclasses.replace(step, output_shapes=((None, *classes),))
    return Graph(steps=(step,), input=0, output=1, points=found.points,
                 transformer_default=found.transformer_default, notes=found.notes())


def _functional(model: Any) -> Any | None:
    """The Functional graph behind a model: itself, a Sequential's inner one, or None (subclassed)."""
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "inputs"):
        return model
    inner = getattr(model, "_functional", None)  # a built Sequential keeps its graph here
    return inner if inner is not None and hasattr(inner, "_nodes_by_depth") else None


def _flatten_into(function: Any, input_numbers: list[int], prefix: str, steps: list[Step], numbers) -> list[int]:
    from keras import KerasTensor, tree

    known = {id(t): n for t, n in zip(function.inputs, input_numbers)}
    for depth in sorted(function._nodes_by_depth, reverse=True):
        for node in function._nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            layer = node.operation
            tensors = node.arguments.keras_tensors
            inner = _functional(layer)
            kwargs_hold_tensors = any(isinstance(v, KerasTensor) for v in tree.flatten(node.arguments.kwargs))
            if inner is not None and len(inner.inputs) == len(tensors) and not kwargs_hold_tensors:
                inner_in = [known[id(t)] for t in tensors]
                inner_out = _flatten_into(inner, inner_in, f"{prefix}{layer.name}/", steps, numbers)
                known.update({id(t): n for t, n in zip(node.outputs, inner_out)})
                continue
            outputs = tuple(next(numbers) for _ in node.outputs)
            known.update({id(t): n for t, n in zip(node.outputs, outputs)})
            steps.append(
                Step(
                    name=prefix + layer.name,
                    layer=layer,
                    arguments=node.arguments,
                    inputs=tuple((id(t), known[id(t)]) for t in tensors),
                    outputs=outputs,
                    output_shapes=tuple(tuple(t.shape) for t in node.outputs),
                    takes_training=_takes_training(layer),
                )
            )
    return [known[id(t)] for t in function.outputs]


def _takes_training(layer: Any) -> bool:
    """Whether the step is called with training=False: every Keras layer is (Keras takes the flag for any layer and
    hands it to the layers it calls, so a subclassed layer whose own call has no `training`, keras-hub's atrous
    pooling say, still runs its BatchNorm and Dropout in inference mode, and leaves their statistics alone), and any
    other call that names it."""
    import keras

    if isinstance(layer, keras.Layer):
        return True
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def needed(steps: Sequence[Step], wanted: set[int]) -> list[Step]:
    """The steps (in order) that contribute to the values numbered in `wanted`."""
    wanted = set(wanted)
    kept: list[Step] = []
    for step in reversed(steps):
        if wanted.intersection(step.outputs):
            kept.append(step)
            wanted.update(n for _, n in step.inputs)
    return kept[::-1]


def image_shape_of(model: Any, input_name: str | None = None) -> tuple:
    """The explained input's shape as images are fed to it, (batch, height, width, channels), for a model that
    takes them channels-first too (model/layouts.py)."""
    shape = input_shape_of(model, input_name)
    function = _functional(model)
    if len(shape) != 4 or function is None:
        return shape
    from explain_cli.model import layouts

    steps: list[Step] = []
    count = len(function.inputs)
    _flatten_into(function, list(range(count)), "", steps, itertools.count(count))
    number = explained_input(function, input_name)
    if number not in layouts.channels_first(steps, number, 4):
        return shape
    return (shape[0], *layouts.last_shape(shape[1:]))


def input_shape_of(model: Any, input_name: str | None = None) -> tuple:
    """The explained input's shape, (batch, height, width, channels) for an image classifier: its input's (of
    several, the one named or the first picture), or for a subclassed model the shape it was built with (saved with
    it); () when there is no single one."""
    inputs = getattr(model, "inputs", None)
    function = _functional(model)
    if inputs is not None and function is not None:
        return tuple(function.inputs[explained_input(function, input_name)].shape)
    if inputs is not None:
        return tuple(inputs[0].shape) if len(inputs) == 1 else ()
    built = list((getattr(model, "_build_shapes_dict", None) or {}).values())
    if len(built) != 1 or not isinstance(built[0], (list, tuple)):
        return ()
    return (None, *built[0][1:])
