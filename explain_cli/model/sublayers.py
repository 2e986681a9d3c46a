"""Layers inside layers, and tokens as grids: every layer output explain can cut at.

A functional graph can be replayed from any of its steps (model/cut.py). A subclassed layer's `call` is Python
(keras-hub's ViTEncoder loops over its transformer blocks), so its sublayers' outputs exist only while that code
runs. `intercepted` replaces a sublayer's `call` on the instance for the length of a `with` block, in the spirit
of a forward hook, and puts it back after: the wrapper can keep the output (a cut's activations), replace it (the
head, given activations) or ask an attention layer for its scores (attention rollout). Inside a tf.function this
happens while tracing, so the compiled graph holds the effect and the user's model is as it was.

Which sublayers run, in which order and with which output shapes is learned by running the model once on two
random images (`catalogue`); an output that is the same for both is no explanation of either. A transformer's
(batch, tokens, channels) outputs are cut as grids: the patch tokens are the last h·w of them (any class, register
or distillation tokens come first), laid out on the grid of the patch embedding's feature map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from explain_cli.errors import first_line

Tensor = Any

ATTENTION_LAYERS = ("MultiHeadAttention", "GroupedQueryAttention")
MAX_EXTRA_TOKENS = 8  # class + distillation + registers: 1 to 5 in the ViTs published so far


@dataclass(frozen=True)
class Point:
    """A layer output: a graph step's (path ()), or that of a sublayer its layer calls (path: names down to it)."""

    name: str  # "vi_t_backbone/vit_encoder/transformer_block_4/layer_norm_1"
    step: str  # the graph step whose call computes it
    path: tuple[str, ...]
    shape: tuple[int | None, ...]  # without the batch axis; () when the layer has several outputs
    order: int  # when it finished, in one forward pass
    started: int  # when its call began
    calls: int = 1  # how often the layer runs per forward pass
    attention: bool = False  # an attention layer (its scores feed attention rollout)
    grid: tuple[int, int] | None = None  # tokens: the patch grid (h, w)
    extra: int = 0  # tokens: how many come before the patch tokens
    constant: bool = False  # the same for every image (a position embedding): nothing there to explain
    kind: str = ""  # the layer's class name

    @property
    def is_tokens(self) -> bool:
        return self.grid is not None

    @property
    def explainable(self) -> bool:
        """A single (batch, h, w, c) feature map (a volume's or a clip's (batch, d, h, w, c)), or tokens on a grid,
        computed once per pass from the image."""
        return self.calls == 1 and not self.constant and (len(self.shape) in (3, 4) or self.is_tokens)

    @property
    def grid_shape(self) -> tuple[int | None, ...]:
        """The shape a method sees: (h, w, c), tokens included."""
        return (*self.grid, self.shape[-1]) if self.grid else self.shape

    def describe(self) -> str:
        return f"{self.grid_shape} tokens" if self.is_tokens else str(self.shape)


def is_attention(layer: Any) -> bool:
    return type(layer).__name__ in ATTENTION_LAYERS


def children(layer: Any) -> list[Any]:
    """A layer's direct sublayers. An attention layer's internals are left out: its projections are
    (tokens, heads, dim), not pictures, and it is cut (or read for its scores) as a whole."""
    if is_attention(layer) or not hasattr(layer, "_flatten_layers"):
        return []
    return list(layer._flatten_layers(include_self=False, recursive=False))


def descendants(layer: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Every sublayer below `layer` with its path of names, each object once."""
    found: list[tuple[tuple[str, ...], Any]] = []
    seen = {id(layer)}

    def visit(parent: Any, path: tuple[str, ...]) -> None:
        for child in children(parent):
            if id(child) not in seen:
                seen.add(id(child))
                found.append(((*path, child.name), child))
                visit(child, (*path, child.name))

    visit(layer, ())
    return found


def sublayer(layer: Any, path: Sequence[str]) -> Any:
    """The sublayer of `layer` at `path` (names, top down); `layer` itself for ()."""
    for name in path:
        (layer,) = [child for child in children(layer) if child.name == name][:1] or [None]
        if layer is None:
            raise LookupError(name)
    return layer


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


@contextlib.contextmanager
def intercepted(wrappers: Sequence[tuple[Any, Wrapper]]) -> Iterator[None]:
    """Within the block, each layer's `call` is wrapper(its own call); afterwards the layer is as it was."""
    patched: list[tuple[Any, bool, Any]] = []
    try:
        for layer, wrap in wrappers:
            had_own = "call" in vars(layer)
            original = layer.call
            # object.__setattr__: Keras' own __setattr__ would track the function as the layer's state.
            object.__setattr__(layer, "call", wrap(original))
            patched.append((layer, had_own, original))
        yield
    finally:
        for layer, had_own, original in reversed(patched):
            if had_own:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")


def keep_output(box: list[Tensor]) -> Wrapper:
    """A wrapper that keeps each output the layer returns in `box`."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            box.append(result)
            return result

        return call

    return wrap


def replace_output(value: Tensor) -> Wrapper:
    """A wrapper that returns `value` instead of computing the layer."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return value

        return call

    return wrap


def keep_attention(box: list[Tensor]) -> Wrapper:
    """A wrapper that has an attention layer return its scores too, keeps them in `box`, and returns only its
    output to the caller (unless the caller asked for the scores itself)."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            asked = kwargs.get("return_attention_scores", False)
            output, scores = original(*args, **{**kwargs, "return_attention_scores": True})
            box.append(scores)
            return (output, scores) if asked else output

        return call

    return wrap


@dataclass(frozen=True)
class Catalogue:
    """Every layer output of a model in the order a forward pass finishes them, and the transformer default."""

    points: tuple[Point, ...]
    transformer_default: str | None = None  # the input of the last transformer block, where there is one
    probe_failure: str | None = None  # why the layers inside subclassed layers could not be listed (--verbose)

    def notes(self) -> tuple[str, ...]:
        """What --verbose says of how the layers were found."""
        if self.probe_failure is None:
            return ()
        return (f"running it on two random images to list the layers inside its subclassed layers failed "
                f"({self.probe_failure}); only the layers of its graph can be cut",)


def needs_probe(steps: Sequence[Any]) -> bool:
    """Whether some step's layer calls sublayers explain cannot see from the graph alone."""
    return any(children(step.layer) for step in steps)


_catalogues: "weakref.WeakKeyDictionary[Any, Catalogue]" = weakref.WeakKeyDictionary()


def catalogue(model: Any, steps: Sequence[Any], input_number: int, input_shape: tuple,
              probe: bool = True) -> Catalogue:
    """The model's layer outputs: from the graph when every step is a plain layer, else (with `probe`: a model of
    one input) by running the model once on two random images with every sublayer's call watched. Cached per model
    object."""
    try:
        return _catalogues[model]
    except (KeyError, TypeError):
        pass
    height_width = input_shape[1:3]
    points, failure = None, None
    if probe and needs_probe(steps) and all(isinstance(d, int) for d in input_shape[1:]):
        import tensorflow as tf

        try:
            points = _probe(steps, input_number, input_shape)
        except (ValueError, TypeError, NotImplementedError, tf.errors.OpError) as error:
            # A layer that cannot run on a random image of the input's shape (it checks its values, say): the graph's
            # own steps can still be cut. Anything else is a defect, and is not hidden.
            failure = f"{type(error).__name__}: {first_line(error)}"
    if points is None:
        points = [
            Point(step.name, step.name, (), tuple(step.output_shapes[0][1:]) if len(step.outputs) == 1 else (),
                  order=2 * i + 1, started=2 * i, attention=is_attention(step.layer), kind=type(step.layer).__name__)
            for i, step in enumerate(steps)
        ]
    points = _with_grids(points, height_width)
    result = Catalogue(tuple(points), _transformer_default(points), failure)
    with contextlib.suppress(TypeError):
        _catalogues[model] = result
    return result


def _probe(steps: Sequence[Any], input_number: int, input_shape: tuple) -> list[Point]:
    import tensorflow as tf

    clock = itertools.count()
    found: list[Point] = []
    counts: dict[int, int] = {}

    def recorder(step: Any, path: tuple[str, ...], layer: Any) -> Wrapper:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                started = next(clock)
                result = original(*args, **kwargs)
                counts[id(layer)] = counts.get(id(layer), 0) + 1
                shape, constant = _seen(result)
                found.append(Point(f"{step.name}/{'/'.join(path)}", step.name, path, shape, next(clock), started,
                                   attention=is_attention(layer), constant=constant, kind=type(layer).__name__))
                return result

            return call

        return wrap

    # Two different images: an output equal for both does not depend on the image.
    values: dict[int, Tensor] = {input_number: tf.random.stateless_uniform((2, *input_shape[1:]), (1, 2))}
    owner: dict[str, int] = {}
    for step in steps:
        inner = descendants(step.layer)
        owner.update({f"{step.name}/{'/'.join(path)}": id(layer) for path, layer in inner})
        started = next(clock)
        with intercepted([(layer, recorder(step, path, layer)) for path, layer in inner]):
            step.run(values)
        shape, constant = _seen(values[step.outputs[0]]) if len(step.outputs) == 1 else ((), False)
        found.append(Point(step.name, step.name, (), shape, next(clock), started, attention=is_attention(step.layer),
                           constant=constant, kind=type(step.layer).__name__))
    unique: dict[str, Point] = {}
    for point in found:  # a layer called twice appears twice: keep one, with its count
        calls = counts.get(owner.get(point.name, -1), 1)
        unique.setdefault(point.name, dataclasses.replace(point, calls=calls))
    return sorted(unique.values(), key=lambda p: p.order)


def _seen(result: Any) -> tuple[tuple, bool]:
    """An output's shape without the batch axis, and whether it is the same for both probe images."""
    import numpy as np

    if not hasattr(result, "shape") or len(result.shape) < 2:
        return (), False
    values = np.asarray(result)
    if values.shape[0] != 2:  # not one row per image (a position embedding broadcast over the batch)
        return tuple(result.shape[1:]), True
    return tuple(result.shape[1:]), bool(np.array_equal(values[0], values[1]))


def _with_grids(points: list[Point], height_width: tuple) -> list[Point]:
    """Token outputs (tokens, channels) with the grid their last h·w tokens lie on: that of the latest feature map
    before them of the input's aspect ratio with at most MAX_EXTRA_TOKENS fewer positions (a patch embedding),
    else the grid of the input's aspect ratio (after a Swin stage's patch merging, say)."""
    height, width = height_width
    placed = []
    for point in points:
        if len(point.shape) == 2 and isinstance(point.shape[0], int):
            tokens = point.shape[0]
            maps = [p.shape[:2] for p in points if len(p.shape) == 3 and p.order < point.order and not p.constant
                    and all(isinstance(d, int) for d in p.shape[:2])]
            fits = [(h, w) for h, w in maps if 0 <= tokens - h * w <= MAX_EXTRA_TOKENS
                    and (not isinstance(height, int) or not isinstance(width, int) or h * width == w * height)]
            grid = fits[-1] if fits else _grid_by_aspect(tokens, height_width)
            if grid is not None:
                point = dataclasses.replace(point, grid=grid, extra=tokens - grid[0] * grid[1])
        placed.append(point)
    return placed


def _grid_by_aspect(tokens: int, height_width: tuple) -> tuple[int, int] | None:
    """The grid h × w ≤ tokens (fewest tokens left over) with the input's aspect ratio, if there is one."""
    height, width = height_width
    if not (isinstance(height, int) and isinstance(width, int)):
        return None
    for extra in range(MAX_EXTRA_TOKENS + 1):
        n = tokens - extra
        for h in range(1, n + 1):
            if n % h == 0 and h * width == (n // h) * height:
                return h, n // h
    return None


def _transformer_default(points: Sequence[Point]) -> str | None:
    """The input of the last transformer block: the last explainable output finished before that block began.

    The block is the layer that calls the last attention layer (keras-hub's ViTEncoderBlock), or the attention
    layer itself where it is a step of the graph. Grad-CAM is taken there because a classifier that reads the class
    token after the last block gives the other tokens of its output no gradient.
    """
    attention = [p for p in points if p.attention]
    if not attention:
        return None
    last = attention[-1]
    parent = last.name.rsplit("/", 1)[0] if last.path else None
    block = next((p for p in points if p.name == parent), last)
    before = [p for p in points if p.explainable and p.order < block.started]
    return before[-1].name if before else None
