"""Cut a Keras model at a layer into a feature part and a head part that share its weights.

The model's graph is a list of steps (model/graph.py: nested models are entered, so `resnet50/conv5_block3_out` is a step
like any other). Cutting at a step's output A gives:

- features(x) -> (A, skips): the steps A depends on, plus any tensor the head needs that is not
  downstream of A (a skip connection crossing the cut);
- head(A, skips) -> logits: the steps downstream of A, replayed with the same layer objects.

head(features(x)) is exactly the model's own function, so ∂logits/∂A is the model's own gradient.
Nothing here changes the user's model: no layer is rebuilt, re-activated or re-wired.

The output of a sublayer inside a subclassed layer (keras-hub's transformer blocks) is not a value of the graph: the
step that calls it runs in both parts, keeping the sublayer's output in the first and replacing it with the given
A in the second (model/sublayers.py). A transformer's tokens are cut as their patch grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from explain_cli.errors import ExplainError
from explain_cli.model.graph import Graph, Step, Tensor, needed
from explain_cli.model.twins import activated, activation_name, is_activation_layer, with_activation


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
    output_shape: tuple[int | None, ...] = ()  # the head's output, without the batch axis
    skip_values: tuple[int, ...] | None = None  # the graph's value numbers of the skips, for a cut between steps
    value: int | None = None  # the graph's value number of A, for a cut between steps

    def through(self, x: Tensor) -> Tensor:
        """The logits through the cut: its feature part, then its head given float32 (computing in float32, or in
        bfloat16 where the cut was made with bf16_head)."""
        import tensorflow as tf

        activations, skips = self.features(x)
        return self.head(tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips))


_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def split(graph: Graph, layer: str, fold: bool = True, hook: bool = False, bf16_head: bool = False) -> Split:
    """Cut `graph` after the layer named `layer` (see the module docstring); with `fold`, every BatchNorm that
    can be is folded into the layer before it (model/folding.py), except where that would change A itself. With `bf16_head`,
    a bf16 run computes the head's feature maps in bfloat16 too: a detector's pyramid and heads, most of its work.

    A sublayer inside a subclassed layer is cut while its step runs (model/sublayers.py); `hook` cuts a step of the graph
    that way too (the two agree: tested). Tokens are cut as their patch grid (inner.Point.grid)."""
    point = check(graph, layer)
    cut = graph.step(point.step)
    a = cut.outputs[0]
    if fold and graph.foldable:
        from explain_cli.model.folding import fold_batchnorm

        graph = fold_batchnorm(graph, keep={a})
    logit_number, activation, steps = pre_activation(graph)
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
    head = needed(head, {logit_number})
    made_by_head = {n for s in head for n in s.outputs}
    skips = tuple(sorted({n for s in head for _, n in s.inputs if n not in made_by_head and n != a}))
    features = needed([s for s in steps if s not in head], {a, *skips})
    exact = features  # in float32 for a runtime, which then computes in the run's precision itself (model/runtime.py)
    if graph.precision == "bf16":
        from explain_cli.model.precision import bfloat16

        features = bfloat16(features)  # the head stays float32 unless asked: see model/precision.py
        if bf16_head:
            head = bfloat16(head)

    def features_of(chosen: list[Step]) -> Features:
        def run(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
            values = graph.run(chosen, graph.feed(x))
            return graph.value(values, a), tuple(values[n] for n in skips)

        return run

    run_features, exact_features = features_of(features), features_of(exact)

    def run_head(activations: Tensor, skip_values: tuple[Tensor, ...]) -> Tensor:
        values = graph.run(head, {a: graph.given(a, activations), **dict(zip(skips, skip_values))})
        return graph.value(values, logit_number)

    captured = 0
    if inside:
        exact_features, _ = _inside(graph, exact, head, point, skips, logit_number)
        run_features, run_head = _inside(graph, features, head, point, skips, logit_number)
        captured = len(_finished_before(graph, point))
    if point.is_tokens:
        exact_features, _ = _as_grid(exact_features, run_head, point)
        run_features, run_head = _as_grid(run_features, run_head, point)
    if graph.offload is not None:
        from explain_cli.model import runtime as offload

        part = ("features", point.name, hook, tuple(s.name for s in exact), a, skips, graph.foldable)
        run_features = offload.forward(graph.offload, f"the feature pass up to {point.name}", part, exact_features,
                                       run_features)
    return Split(
        layer=point.name,
        activation=activation,
        features=run_features,
        head=run_head,
        head_steps=tuple(head),
        skips=len(skips) + captured + bool(point.extra),
        attentions=attention_scores(graph),
        tokens=_token_layout(graph),
        output_shape=output_shape(graph),
        skip_values=None if inside or point.is_tokens else skips,
        value=None if inside or point.is_tokens else a,
    )


def output_shape(graph: Graph) -> tuple[int | None, ...]:
    """The explained output's shape, without the batch axis."""
    from explain_cli.model.layouts import last_shape

    output = graph.chosen_output()
    step = next(s for s in graph.steps if output in s.outputs)
    shape = tuple(step.output_shapes[step.outputs.index(output)][1:])
    return last_shape(shape) if output in graph.channels_first else shape


def check(graph: Graph, layer: str) -> Any:
    """The layer output (inner.Point) `split` would cut at, checked without building anything: it exists, is a
    feature map or tokens on a grid, and feeds the logits."""
    point = graph.find(layer)
    if not point.explainable:
        raise ExplainError(_not_explainable(point))
    logit_number, _, steps = pre_activation(graph)
    if point.step not in {s.name for s in needed(steps, {logit_number})}:
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
    the first and replacing it with the given activations in the second (head[0] is that step).

    The head starts at the cut where the step's sublayers allow it: every sublayer of the step that finished before
    the cut began (called once, one tensor per image) keeps its output in the feature pass, and the head is given
    that output instead of computing it again. A transformer block's residual needs the block's input, which without
    this the head recomputed through every block before the cut (measured: 1.89x plain inference at the last block's
    first norm on a ViT-S/16, 1.10x with it)."""
    from explain_cli.model import sublayers as inner

    cut, before = head[0], features
    done = _finished_before(graph, point)

    def target(step: Step) -> Any:
        return inner.sublayer(step.layer, point.path)

    def run_features(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        values = graph.run(before, graph.feed(x))
        kept: list[Tensor] = []
        finished: list[list[Tensor]] = [[] for _ in done]
        with inner.intercepted([(target(cut), inner.keep_output(kept))] + [
                (inner.sublayer(cut.layer, path), inner.keep_output(box)) for path, box in zip(done, finished)]):
            cut.run(dict(values))
        return kept[0], tuple(values[n] for n in skips) + tuple(box[0] for box in finished)

    def run_head(activations: Tensor, skip_values: tuple[Tensor, ...]) -> Tensor:
        values = dict(zip(skips, skip_values[:len(skips)]))
        given = skip_values[len(skips):]
        with inner.intercepted([(target(cut), inner.replace_output(activations))] + [
                (inner.sublayer(cut.layer, path), inner.replace_output(value)) for path, value in zip(done, given)]):
            cut.run(values)
        return graph.value(graph.run(head[1:], values), logit_number)

    return run_features, run_head


def _finished_before(graph: Graph, point: Any) -> list[tuple[str, ...]]:
    """The outermost sublayers of the cut's step that finish before the cut begins, each called once with one tensor
    per image: what the head can be given rather than compute again."""
    inside = [p for p in graph.points if p.step == point.step and p.path and p.order < point.started]
    usable = [p for p in inside if p.calls == 1 and len(p.shape) >= 1 and not p.constant]
    paths = {p.path for p in usable}
    return [p.path for p in usable if not any(p.path[:i] in paths for i in range(1, len(p.path)))]


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
    from explain_cli.model import sublayers as inner

    if not any(p.attention for p in graph.points):
        return None
    logit_number, _, steps = pre_activation(graph)
    steps = needed(steps, {logit_number})

    def layers_of(step: Step) -> list[Any]:
        if inner.is_attention(step.layer):
            return [step.layer]
        return [layer for _, layer in inner.descendants(step.layer) if inner.is_attention(layer)]

    def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
        kept: list[Tensor] = []
        values = graph.feed(x)
        for step in steps:
            with inner.intercepted([(layer, inner.keep_attention(kept)) for layer in layers_of(step)]):
                step.run(values)
        return graph.value(values, logit_number), kept

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
        and type(core[0].layer).__name__ in ("GlobalAveragePooling2D", "GlobalAveragePooling3D")
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
    from explain_cli.model import sublayers as inner

    points = [graph.find(name) for name in names]
    wanted = {graph.step(p.step).outputs[0] for p in points}
    exact = steps = needed(graph.steps, wanted)
    if graph.precision == "bf16":
        from explain_cli.model.precision import bfloat16

        steps = bfloat16(steps)

    def through(chosen: list[Step]) -> Callable[[Tensor], tuple[Tensor, ...]]:
        def run(x: Tensor) -> tuple[Tensor, ...]:
            kept: dict[str, list[Tensor]] = {p.name: [] for p in points}
            values = graph.feed(x)
            for step in chosen:
                hooks = [(inner.sublayer(step.layer, p.path), inner.keep_output(kept[p.name]))
                         for p in points if p.step == step.name]
                with inner.intercepted(hooks):
                    step.run(values)
            return tuple(_grid(kept[p.name][0], p) if p.is_tokens else _seen(graph, p, kept[p.name][0])
                         for p in points)

        return run

    run = through(steps)
    if graph.offload is not None:  # a forward pass alone: the runtime's, as the feature pass before a cut
        from explain_cli.model import runtime as offload

        part = ("outputs", tuple(p.name for p in points), tuple(s.name for s in exact))
        said = points[0].name if len(points) == 1 else f"{len(points)} layers, {points[0].name} to {points[-1].name}"
        run = offload.forward(graph.offload, f"the activations of {said}", part, through(exact), run)
    return lambda x: list(run(x))


def _seen(graph: Graph, point: Any, output: Tensor) -> Tensor:
    """A layer's output as a method sees it, (b, h, w, c), where the model holds it channels-first."""
    number = graph.step(point.step).outputs[0]
    return graph.value({number: output}, number) if not point.path else output


def logits(graph: Graph, fold: bool = True, forward_only: bool = False) -> tuple[Callable[[Tensor], Tensor], str]:
    """The whole model up to its logits, and how they become probabilities (uncut, for predictions); BatchNorm
    folded with `fold`. `forward_only`: nothing is differentiated through it, so it may run on the graph's runtime:
    up to its offload's layer there, and after it in TensorFlow as an explanation's head does."""
    if forward_only and graph.offload is not None and graph.offload.layer is not None:
        cut = split(graph, graph.offload.layer, fold=fold)
        return cut.through, cut.activation
    if fold and graph.foldable:
        from explain_cli.model.folding import fold_batchnorm

        graph = fold_batchnorm(graph)
    logit_number, activation, steps = pre_activation(graph)
    exact = steps = needed(steps, {logit_number})
    if graph.precision == "bf16":
        from explain_cli.model.precision import bfloat16

        steps = bfloat16(steps)

    def logits_of(chosen: list[Step]) -> Callable[[Tensor], Tensor]:
        return lambda x: graph.value(graph.run(chosen, graph.feed(x)), logit_number)

    if forward_only and graph.offload is not None:
        from explain_cli.model import runtime as offload

        part = ("logits", tuple(s.name for s in exact), logit_number, graph.foldable)
        return offload.forward(graph.offload, "the forward passes", part, logits_of(exact), logits_of(steps)), activation
    return logits_of(steps), activation


def pre_activation(graph: Graph) -> tuple[int, str, list[Step]]:
    """Where the logits are, how the model turns them into probabilities, and the steps to run.

    The Grad-CAM paper differentiates the class score before the softmax. A final softmax or
    sigmoid (an activation layer, or a Dense's own activation) is left out of the steps; in the
    Dense case the step calls a shallow copy of the layer with a linear activation, which shares
    the layer's variables and leaves the user's layer as it was. A final step that only moves the channels (a
    Permute to NCHW) is read through: its input is the same scores, in the layout graph.value reads.
    """
    from explain_cli.model.layouts import is_layout_only

    steps = list(graph.steps)
    output = graph.chosen_output()
    last = next(s for s in reversed(steps) if output in s.outputs)
    while is_layout_only(last.layer) and len(last.inputs) == 1:  # channels moved after the softmax: read before it
        ((_, output),) = last.inputs
        last = next(s for s in reversed(steps) if output in s.outputs)
    final = _final_sublayer(graph, last)
    if final is not None:  # a layer whose call ends in a sublayer's softmax (a subclassed model)
        path, kind = final
        steps[steps.index(last)] = dataclasses.replace(last, hooks=(*last.hooks, (path, _linear_instead)))
        return output, kind, steps
    kind = activation_name(last.layer)
    if kind not in _PROBABILITY_ACTIVATIONS:
        return output, "linear", steps
    if is_activation_layer(last.layer):
        ((_, logits),) = last.inputs
        steps.remove(last)
        return logits, kind, steps
    from keras import activations

    steps[steps.index(last)] = with_activation(last, activations.linear)
    return output, kind, steps


def _final_sublayer(graph: Graph, last: Step) -> tuple[tuple[str, ...], str] | None:
    """The path and activation of the sublayer whose softmax or sigmoid ends the last step's call, if one does: the
    last of its sublayers to finish, when it finishes with the step's own output shape."""
    from explain_cli.model import sublayers as inner

    if not inner.children(last.layer):
        return None
    inside = [p for p in graph.points if p.step == last.name]
    if len(inside) < 2 or inside[-1].path or inside[-2].shape != inside[-1].shape:
        return None
    final = inside[-2]
    kind = activation_name(inner.sublayer(last.layer, final.path))
    return (final.path, kind) if kind in _PROBABILITY_ACTIVATIONS else None


def _linear_instead(layer: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An inner.Wrapper for `layer`: its call without its softmax or sigmoid (an activation layer passes its input)."""
    if is_activation_layer(layer):
        return lambda original: lambda inputs, *args, **kwargs: inputs
    from keras import activations

    double = activated(layer, activations.linear)
    return lambda original: double.call


