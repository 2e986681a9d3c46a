"""Cut a Keras model at a layer into a feature part and a head part that share its weights.

The model's functional graph is flattened into a list of steps (nested models are entered, so
`resnet50/conv5_block3_out` is a step like any other). Cutting at a step's output A gives:

- features(x) -> (A, skips): the steps A depends on, plus any tensor the head needs that is not
  downstream of A (a skip connection crossing the cut);
- head(A, skips) -> logits: the steps downstream of A, replayed with the same layer objects.

head(features(x)) is exactly the model's own function, so ∂logits/∂A is the model's own gradient.
Nothing here changes the user's model: no layer is rebuilt, re-activated or re-wired.

The output of a sublayer inside a subclassed layer (keras-hub's transformer blocks) is not a value of the graph: the
step that calls it runs in both parts, keeping the sublayer's output in the first and replacing it with the given
A in the second (inner.py). A transformer's tokens are cut as their patch grid.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from explain_cli.errors import ExplainError

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
            from explain_cli import inner

            sublayers = [(inner.sublayer(self.layer, path), make) for path, make in self.hooks]
            with inner.intercepted([(layer, make(layer)) for layer, make in sublayers]):
                result = self.layer(*args, **kwargs)
        else:
            result = self.layer(*args, **kwargs)
        results = result if isinstance(result, (list, tuple)) else [result]
        for number, value in zip(self.outputs, results):
            values[number] = value


@dataclass(frozen=True)
class Graph:
    """A model as a topologically ordered list of steps from one input to one output, and every layer output
    that can be cut at (inner.py: sublayers of subclassed layers included)."""

    steps: tuple[Step, ...]
    input: int
    output: int
    precision: str = "fp32"  # "bf16": run in bfloat16 (precision.py): a cut's feature part, or a whole forward pass
    points: tuple[Any, ...] = ()  # inner.Point, in the order a forward pass finishes them
    foldable: bool = True  # False: weights will change after compiling (--sanity), so fold nothing (fold.py)
    transformer_default: str | None = None  # the input of the last transformer block, where there is one
    notes: tuple[str, ...] = ()  # how its layers were found, for --verbose

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


def flatten(model: Any) -> Graph:
    """The model's call graph as steps, entering nested functional and Sequential models."""
    function = _functional(model)
    if function is None:
        return _whole(model)
    if len(function.inputs) != 1 or len(function.outputs) != 1:
        raise ExplainError(
            f"model {model.name!r} has {len(function.inputs)} inputs and {len(function.outputs)} outputs:"
            " only single-input, single-output classifiers can be explained"
        )
    numbers = itertools.count()
    input_number = next(numbers)
    steps: list[Step] = []
    (output,) = _flatten_into(function, [input_number], "", steps, numbers)
    from explain_cli import inner

    found = inner.catalogue(model, steps, input_number, tuple(function.inputs[0].shape))
    return Graph(steps=tuple(steps), input=input_number, output=output, points=found.points,
                 transformer_default=found.transformer_default, notes=found.notes())


class _InputAlone:
    """The call arguments of a step that takes the model's input alone: a subclassed model, run whole."""

    keras_tensors: tuple = ()

    def fill_in(self, values: dict) -> tuple[tuple, dict]:
        return (values[0],), {}


def _whole(model: Any) -> Graph:
    """A subclassed model as one step; its layers are cut while it runs (inner.py)."""
    from explain_cli import inner
    from explain_cli.models import input_shape_of

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
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class Split:
    """A model cut at `layer`: head(*features(x)) are the model's logits."""

    layer: str
    activation: str  # how logits become probabilities: "softmax", "sigmoid" or "linear"
    features: Callable[[Tensor], tuple[Tensor, tuple[Tensor, ...]]]
    head: Callable[[Tensor, tuple[Tensor, ...]], Tensor]
    head_steps: tuple[Step, ...] = ()
    skips: int = 0  # how many tensors cross the cut besides A
    attentions: Callable[[Tensor], tuple[Tensor, list[Tensor]]] | None = None  # logits, and the attention scores
    tokens: tuple[int, int, int] | None = None  # the attention tokens' layout: (extra, grid h, grid w)


_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def split(graph: Graph, layer: str, fold: bool = True, hook: bool = False) -> Split:
    """Cut `graph` after the layer named `layer` (see the module docstring); with `fold`, every BatchNorm that
    can be is folded into the layer before it (fold.py), except where that would change A itself.

    A sublayer inside a subclassed layer is cut while its step runs (inner.py); `hook` cuts a step of the graph
    that way too (the two agree: tested). Tokens are cut as their patch grid (inner.Point.grid)."""
    point = check(graph, layer)
    cut = graph.step(point.step)
    a = cut.outputs[0]
    if fold and graph.foldable:
        from explain_cli.fold import fold_batchnorm

        graph = fold_batchnorm(graph, keep={a})
    logit_number, activation, steps = _pre_activation(graph)
    inside = bool(point.path) or hook
    if inside:  # the step that makes A now: folding may have merged the cut's step into the one before it
        cut = next(s for s in steps if a in s.outputs)

    downstream = {a}
    head: list[Step] = [cut] if inside else []
    for step in steps:
        if any(number in downstream for _, number in step.inputs):
            head.append(step)
            downstream.update(step.outputs)
    if logit_number not in downstream:
        raise ExplainError(f"layer {point.name!r} does not feed the model's output, so it cannot explain it")
    head = _needed(head, {logit_number})
    made_by_head = {n for s in head for n in s.outputs}
    skips = tuple(sorted({n for s in head for _, n in s.inputs if n not in made_by_head and n != a}))
    features = _needed([s for s in steps if s not in head], {a, *skips})
    if graph.precision == "bf16":
        from explain_cli.precision import bfloat16

        features = bfloat16(features)  # the head stays float32: see precision.py

    def run_features(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        values = graph.run(features, {graph.input: x})
        return values[a], tuple(values[n] for n in skips)

    def run_head(activations: Tensor, skip_values: tuple[Tensor, ...]) -> Tensor:
        values = graph.run(head, {a: activations, **dict(zip(skips, skip_values))})
        return values[logit_number]

    if inside:
        run_features, run_head = _inside(graph, features, head, point, skips, logit_number)
    if point.is_tokens:
        run_features, run_head = _as_grid(run_features, run_head, point)
    return Split(
        layer=point.name,
        activation=activation,
        features=run_features,
        head=run_head,
        head_steps=tuple(head),
        skips=len(skips) + bool(point.extra),
        attentions=attention_scores(graph),
        tokens=_token_layout(graph),
    )


def check(graph: Graph, layer: str) -> Any:
    """The layer output (inner.Point) `split` would cut at, checked without building anything: it exists, is a
    feature map or tokens on a grid, and feeds the logits."""
    point = graph.find(layer)
    if not point.explainable:
        raise ExplainError(_not_explainable(point))
    logit_number, _, steps = _pre_activation(graph)
    if point.step not in {s.name for s in _needed(steps, {logit_number})}:
        raise ExplainError(f"layer {point.name!r} does not feed the model's output, so it cannot explain it")
    return point


def _not_explainable(point: Any) -> str:
    if point.calls > 1:
        return (f"layer {point.name!r} runs {point.calls} times in one forward pass, so its output is not one "
                "activation (see `explain layers`)")
    return (f"layer {point.name!r} has output shape {(None, *point.shape)}: Grad-CAM needs a 4-D feature map or "
            "tokens on a patch grid (see `explain layers`)")


Features = Callable[[Tensor], tuple[Tensor, tuple[Tensor, ...]]]
Head = Callable[[Tensor, tuple[Tensor, ...]], Tensor]


def _inside(graph: Graph, features: list[Step], head: list[Step], point: Any, skips: tuple[int, ...],
            logit_number: int) -> tuple[Features, Head]:
    """features and head for a cut inside a step's call: the step runs in both, keeping the sublayer's output in
    the first and replacing it with the given activations in the second (head[0] is that step)."""
    from explain_cli import inner

    cut, before = head[0], features

    def target(step: Step) -> Any:
        return inner.sublayer(step.layer, point.path)

    def run_features(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        values = graph.run(before, {graph.input: x})
        kept: list[Tensor] = []
        with inner.intercepted([(target(cut), inner.keep_output(kept))]):
            cut.run(dict(values))
        return kept[0], tuple(values[n] for n in skips)

    def run_head(activations: Tensor, skip_values: tuple[Tensor, ...]) -> Tensor:
        values = dict(zip(skips, skip_values))
        with inner.intercepted([(target(cut), inner.replace_output(activations))]):
            cut.run(values)
        return graph.run(head[1:], values)[logit_number]

    return run_features, run_head


def _as_grid(features: Features, head: Head, point: Any) -> tuple[Features, Head]:
    """A token cut seen as its patch grid: A (b, h, w, c) from the last h·w tokens; the tokens before them travel
    to the head as one more skip value and are put back in front."""
    import tensorflow as tf

    h, w = point.grid
    extra = point.extra

    def grid_features(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        tokens, skips = features(x)
        return _grid(tokens, point), (*skips, tokens[:, :extra, :]) if extra else skips

    def grid_head(grid: Tensor, skips: tuple[Tensor, ...]) -> Tensor:
        patches = tf.reshape(grid, [-1, h * w, grid.shape[-1]])
        if extra:
            *skips, front = skips
            patches = tf.concat([tf.cast(front, patches.dtype), patches], axis=1)
        return head(patches, tuple(skips))

    return grid_features, grid_head


def _grid(tokens: Tensor, point: Any) -> Tensor:
    """(b, tokens, c) -> (b, h, w, c): the patch tokens (the last h·w) on the point's grid."""
    import tensorflow as tf

    return tf.reshape(tokens[:, point.extra:, :], [-1, *point.grid, tokens.shape[-1]])


def _token_layout(graph: Graph) -> tuple[int, int, int] | None:
    """(extra tokens, grid h, grid w) of the attention layers' tokens, for attention rollout."""
    attention = [p for p in graph.points if p.attention and p.is_tokens]
    return (attention[-1].extra, *attention[-1].grid) if attention else None


def attention_scores(graph: Graph) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]] | None:
    """input -> (the logits, every attention layer's scores (b, heads, tokens, tokens) in the order the layers run),
    from one forward pass; None for a model without attention layers."""
    from explain_cli import inner

    if not any(p.attention for p in graph.points):
        return None
    logit_number, _, steps = _pre_activation(graph)
    steps = _needed(steps, {logit_number})

    def layers_of(step: Step) -> list[Any]:
        if inner.is_attention(step.layer):
            return [step.layer]
        return [layer for _, layer in inner.descendants(step.layer) if inner.is_attention(layer)]

    def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
        kept: list[Tensor] = []
        values = {graph.input: x}
        for step in steps:
            with inner.intercepted([(layer, inner.keep_attention(kept)) for layer in layers_of(step)]):
                step.run(values)
        return values[logit_number], kept

    return run


_PASS_THROUGH = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "ActivityRegularization")


def dense_head(cut: Split) -> Any:
    """The (k, classes) kernel of a head that is global average pooling then Dense, for CAM.

    Layers that are the identity at inference (dropout, noise) may stand between them.
    """
    kinds = [type(s.layer).__name__ for s in cut.head_steps]
    core = [s for s in cut.head_steps if type(s.layer).__name__ not in _PASS_THROUGH]
    is_gap_dense = (
        cut.skips == 0
        and len(core) == 2
        and type(core[0].layer).__name__ == "GlobalAveragePooling2D"
        and not getattr(core[0].layer, "keepdims", False)
        and type(core[1].layer).__name__ == "Dense"
    )
    if not is_gap_dense:
        path = " → ".join(kinds) or "nothing"
        raise ExplainError(
            f"cam needs the layer to be followed by global average pooling then Dense; after {cut.layer} "
            f"this model has: {path}. Use gradcam (equal to CAM for such heads) or pick the last conv layer"
        )
    return core[1].layer.kernel


def outputs_of(graph: Graph, names: Sequence[str]) -> Callable[[Tensor], list[Tensor]]:
    """input -> the outputs of the named layers (tokens as their grid), all from one pass over the steps they
    need; a sublayer's output is kept while its step runs."""
    from explain_cli import inner

    points = [graph.find(name) for name in names]
    wanted = {graph.step(p.step).outputs[0] for p in points}
    steps = _needed(graph.steps, wanted)
    if graph.precision == "bf16":
        from explain_cli.precision import bfloat16

        steps = bfloat16(steps)

    def run(x: Tensor) -> list[Tensor]:
        kept: dict[str, list[Tensor]] = {p.name: [] for p in points}
        values = {graph.input: x}
        for step in steps:
            hooks = [(inner.sublayer(step.layer, p.path), inner.keep_output(kept[p.name]))
                     for p in points if p.step == step.name]
            with inner.intercepted(hooks):
                step.run(values)
        return [_grid(kept[p.name][0], p) if p.is_tokens else kept[p.name][0] for p in points]

    return run


def logits(graph: Graph, fold: bool = True) -> tuple[Callable[[Tensor], Tensor], str]:
    """The whole model up to its logits, and how they become probabilities (uncut, for predictions); BatchNorm
    folded with `fold`."""
    if fold and graph.foldable:
        from explain_cli.fold import fold_batchnorm

        graph = fold_batchnorm(graph)
    logit_number, activation, steps = _pre_activation(graph)
    steps = _needed(steps, {logit_number})
    if graph.precision == "bf16":
        from explain_cli.precision import bfloat16

        steps = bfloat16(steps)

    def run_logits(x: Tensor) -> Tensor:
        return graph.run(steps, {graph.input: x})[logit_number]

    return run_logits, activation


def _needed(steps: Sequence[Step], wanted: set[int]) -> list[Step]:
    """The steps (in order) that contribute to the values numbered in `wanted`."""
    wanted = set(wanted)
    kept: list[Step] = []
    for step in reversed(steps):
        if wanted.intersection(step.outputs):
            kept.append(step)
            wanted.update(n for _, n in step.inputs)
    return kept[::-1]


def _pre_activation(graph: Graph) -> tuple[int, str, list[Step]]:
    """Where the logits are, how the model turns them into probabilities, and the steps to run.

    The Grad-CAM paper differentiates the class score before the softmax. A final softmax or
    sigmoid (an activation layer, or a Dense's own activation) is left out of the steps; in the
    Dense case the step calls a shallow copy of the layer with a linear activation, which shares
    the layer's variables and leaves the user's layer as it was.
    """
    steps = list(graph.steps)
    last = next(s for s in reversed(steps) if graph.output in s.outputs)
    final = _final_sublayer(graph, last)
    if final is not None:  # a layer whose call ends in a sublayer's softmax (a subclassed model)
        path, kind = final
        steps[steps.index(last)] = dataclasses.replace(last, hooks=(*last.hooks, (path, _linear_instead)))
        return graph.output, kind, steps
    kind = _activation_name(last.layer)
    if kind not in _PROBABILITY_ACTIVATIONS:
        return graph.output, "linear", steps
    if _is_activation_layer(last.layer):
        ((_, logits),) = last.inputs
        steps.remove(last)
        return logits, kind, steps
    from keras import activations

    steps[steps.index(last)] = _with_activation(last, activations.linear)
    return graph.output, kind, steps


def _final_sublayer(graph: Graph, last: Step) -> tuple[tuple[str, ...], str] | None:
    """The path and activation of the sublayer whose softmax or sigmoid ends the last step's call, if one does: the
    last of its sublayers to finish, when it finishes with the step's own output shape."""
    from explain_cli import inner

    if not inner.children(last.layer):
        return None
    inside = [p for p in graph.points if p.step == last.name]
    if len(inside) < 2 or inside[-1].path or inside[-2].shape != inside[-1].shape:
        return None
    final = inside[-2]
    kind = _activation_name(inner.sublayer(last.layer, final.path))
    return (final.path, kind) if kind in _PROBABILITY_ACTIVATIONS else None


def _linear_instead(layer: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An inner.Wrapper for `layer`: its call without its softmax or sigmoid (an activation layer passes its input)."""
    if _is_activation_layer(layer):
        return lambda original: lambda inputs, *args, **kwargs: inputs
    from keras import activations

    double = _activated(layer, activations.linear)
    return lambda original: double.call


def _with_activation(step: Step, activation: Callable[[Tensor], Tensor]) -> Step:
    """The step calling a twin of its layer with another activation: same variables, and the user's layer left
    as it was."""
    return dataclasses.replace(step, layer=_activated(step.layer, activation))


def _activated(layer: Any, activation: Callable[[Tensor], Tensor]) -> Any:
    """A twin of the layer with another activation."""
    double = twin(layer)
    object.__setattr__(double, "activation", activation)
    return double


def twin(layer: Any) -> Any:
    """A new object of the layer's class with the same attributes, so the same variables: what changes the model's
    weights changes what the twin computes, and no second copy of them is held. (copy.copy would serialise a Keras
    layer and load it back, with variables of its own.)"""
    double = object.__new__(type(layer))
    double.__dict__.update(vars(layer))
    return double


# Activations guided by guided backpropagation, by their function's or layer class's name.
_RELU_FAMILY = ("relu", "relu6", "leaky_relu")
_RELU_LAYERS = ("ReLU", "LeakyReLU")


def guided(graph: Graph) -> Graph:
    """The graph with every ReLU-family activation guided (Springenberg et al. 2015): its backward pass is
    ReLU(upstream) · f'(x), so only positive gradients pass, and only where f passes them on.

    Guided are ReLU and LeakyReLU layers (any max_value, threshold, negative_slope: ReLU6 is
    ReLU(6)), and the relu / relu6 / leaky_relu activation of any layer (Conv2D, Dense, Activation).
    The forward pass is unchanged, and so is the user's model.
    """
    from explain_cli import inner

    steps = []
    for step in graph.steps:
        if type(step.layer).__name__ in _RELU_LAYERS:
            step = dataclasses.replace(step, layer=_guide(step.layer), takes_training=False)
        elif _activation_name(step.layer) in _RELU_FAMILY:
            step = _with_activation(step, _guide(step.layer.activation))
        else:  # the sublayers of a subclassed layer, guided while it runs
            relus = [path for path, layer in inner.descendants(step.layer) if _is_relu(layer)]
            step = dataclasses.replace(step, hooks=(*step.hooks, *((path, _guided_call) for path in relus)))
        steps.append(step)
    return dataclasses.replace(graph, steps=tuple(steps))


def _is_relu(layer: Any) -> bool:
    return type(layer).__name__ in _RELU_LAYERS or _activation_name(layer) in _RELU_FAMILY


def _guided_call(layer: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An inner.Wrapper for a ReLU-family sublayer: its call with the activation guided."""
    if type(layer).__name__ in _RELU_LAYERS:
        return lambda original: lambda inputs, *args, **kwargs: _guide(original)(inputs)
    double = _activated(layer, _guide(layer.activation))
    return lambda original: double.call


def _guide(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """An element-wise activation f whose gradient is ReLU(upstream) · f'(x)."""
    import tensorflow as tf

    @tf.custom_gradient
    def guided_activation(x: Tensor) -> tuple[Tensor, Callable]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)

        def backward(upstream: Tensor) -> Tensor:
            # f is element-wise, so the vector-Jacobian product with ReLU(upstream) is ReLU(upstream) · f'(x).
            return tape.gradient(y, x, output_gradients=tf.nn.relu(upstream))

        return y, backward

    return guided_activation


def _is_activation_layer(layer: Any) -> bool:
    return type(layer).__name__ in ("Activation", "Softmax")


def _activation_name(layer: Any) -> str:
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"
