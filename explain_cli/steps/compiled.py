"""The compiled steps: predictions, and explanations for a batch in one feature pass.

The feature part runs outside the gradient tape; only the head runs under it. For k classes per
image the head runs on the activations tiled k times, so one backward pass yields every
(image, class) gradient at once, and no image's gradient is ever mixed with another's. What is differentiated is
the model's head's target for each row (model/heads.py, targets.rows): a class's logit, a binary head's ±logit, a value, or
a segmentation class's scores summed over a region.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.model import graph as graph_module
from explain_cli.model import cut as split_module
from explain_cli.errors import ExplainError
from explain_cli.model.guided import guided
from explain_cli.methods import METHODS, MethodInputs
from explain_cli.methods.base import grid_axes, resized
from explain_cli.model.loading import LoadedModel
from explain_cli.steps.rows import per_image as regroup
from explain_cli.steps.holding import attributions as held_attributions
from explain_cli.steps.holding import watched as held_watched
from explain_cli.steps.rows import read_rows, tile


@dataclass(frozen=True)
class BatchResult:
    """What one compiled explain step returns for a batch of b images and k classes each."""

    probabilities: np.ndarray  # (b, classes): probabilities; a value head's value; a segmentation's pixel shares
    classes: np.ndarray  # (b, k) class numbers explained
    scores: np.ndarray  # (b, k) the differentiated score: logit (a value, a region's sum) or probability
    maps: np.ndarray  # (b, k, h, w) the method's maps at the layer's resolution, not normalised
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # a segmentation: "share", "mean_probability" (b, k)
    # of each explained region, and "segmentation" (b, h, w): each pixel's class


def graph_of(model: LoadedModel, offload: Any = None) -> graph_module.Graph:
    """The model's graph as explain replays it: in bfloat16 when the model's precision says so; BatchNorm unfolded for
    a model in memory, whose weights may change after the steps are compiled; its forward-only passes on `offload`'s
    runtime (offload.Offload; None: TensorFlow)."""
    graph = graph_module.flatten(model.keras_model, model.output, model.input_name)
    return dataclasses.replace(graph, precision=model.precision, foldable=graph.foldable and not model.live,
                               offload=offload)


def default_layer(graph: graph_module.Graph, model: LoadedModel) -> str:
    """The registered layer of a built-in model; for a transformer, the input of its last block; else the last
    feature map (or tokens on a grid) larger than 1×1 before the output's own layer (a segmenter's output is a
    feature map too, and explains nothing of itself, nor does a resize after it), not counting layers that only resize
    or pass on the map before them."""
    if model.default_layer is not None:
        return model.default_layer
    if graph.transformer_default is not None:
        return graph.transformer_default
    before = _steps_before_the_output(graph)
    rank = len(model.grid) + 1  # a picture's maps (h, w, c); a volume's or a clip's (d, h, w, c)
    spatial = [p for p in graph.explainable() if len(p.grid_shape) == rank and all(
        d is None or d > 1 for d in p.grid_shape[:-1]) and (before is None or p.step in before)
        and p.kind not in PASSING]
    if not spatial:
        raise ExplainError(f"model {model.name!r} has no layer with a {rank + 1}-D output or tokens on a grid to "
                           "explain")
    return spatial[-1].name


# Layers that only resize the map before them: that map, larger (and costlier to weigh), explains nothing more.
RESIZES = ("UpSampling2D", "Resizing")
# Layers whose output at inference is the map before them, or that map resized: the default names the map's maker.
PASSING = (*RESIZES, "Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "Identity")


def _steps_before_the_output(graph: graph_module.Graph) -> set[str] | None:
    """The steps before the one that makes the output's scores (None: the model has several outputs, none chosen)."""
    if graph.output is None:
        return None
    logits, _, steps = split_module.pre_activation(graph)
    maker = {value: i for i, s in enumerate(steps) for value in s.outputs}
    last = maker[logits]
    while (type(steps[last].layer).__name__ in RESIZES and len(steps[last].inputs) == 1
           and steps[last].inputs[0][1] in maker):
        # SegFormer resizes its class scores to the input's size: the layer that scored them is the output's own.
        last = maker[steps[last].inputs[0][1]]
    return {s.name for s in steps[:last]} if len(steps) > 1 else {s.name for s in steps}


def head_of(model: LoadedModel, graph: graph_module.Graph) -> Any:
    """The model's head (heads.Head): as loaded, or read from the graph for a LoadedModel made by hand."""
    from explain_cli.model import heads

    if model.head is not None:
        return model.head
    _, activation, _ = split_module.pre_activation(graph)
    return heads.detect(split_module.output_shape(graph), activation)


def _input_spec(model: LoadedModel) -> Any:
    import tensorflow as tf

    return tf.TensorSpec([None, *model.grid, model.channels], getattr(tf, model.pixels))


def compile_predict(model: LoadedModel, graph: graph_module.Graph,
                    pixels: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A batch (b, h, w, c) of pixels in 0-255, uint8 (or "float32": perturbed images; by default what the model's
    steps take, model.pixels) -> (b, classes): each class's
    probability (a value head's value; a segmentation's share of pixels per class), through one traced graph.

    The returned callable has `.traced` (the tf.function) for counting traces.
    """
    from explain_cli.model import heads

    def read(head: Any, raw: Any) -> Any:
        if head.kind == "pixels":
            return heads.pixel_shares(head, raw, heads.pixel_classes(head, raw))
        return heads.probabilities(head, raw)

    step = forward_step(model, graph, pixels or model.pixels, read)

    def run(batch: np.ndarray) -> np.ndarray:
        return step(batch).numpy()

    run.traced = step  # type: ignore[attr-defined]
    return run


def forward_step(model: LoadedModel, graph: graph_module.Graph, pixels: str,
                  read: Callable[[Any, Any], Any]) -> Any:
    """The compiled forward pass every prediction step shares: a batch of `pixels` (a dtype name) preprocessed, run to
    the head's pre-activation output, and `read(head, raw)` from it."""
    import tensorflow as tf

    forward, _ = split_module.logits(graph, forward_only=True)
    head = head_of(model, graph)

    @compiled([tf.TensorSpec([None, *model.grid, model.channels], getattr(tf, pixels))], model)
    def step(images: Any) -> Any:
        return read(head, forward(model.preprocess(tf.cast(images, tf.float32))))

    return step


def compile_explain(
    model: LoadedModel,
    cut: split_module.Split,
    method: str,
    *,
    classes: Sequence[int] = (),
    top_k: int = 1,
    score: str = "logit",
    counterfactual: bool = False,
    max_masks: int = 64,
    per_image: bool = False,
    regions: bool = False,
    inside: bool = False,
    references: int = 0,
) -> Any:
    """uint8 batch -> BatchResult, explaining `classes` for every image, or else each image's top k; with
    `per_image`, the step also takes each image's own class (b,) and explains that one; with `regions` (a
    segmentation), each image's region (b, H, W) at the input's resolution, over which a class's scores are summed
    (default: where the class is predicted); with `inside` (a letterbox), where each picture lies on the input
    (b, H, W): a segmentation is read there alone; with `references` (k), the cosine likeness of the model's output to
    each image's k reference vectors (b, k, D), one row each (rows.similarity_rows).

    `counterfactual` negates the gradients (Grad-CAM §counterfactual explanations: what would raise
    the score if removed). The returned callable has `.traced` (a tf.function) for counting traces.
    """
    import tensorflow as tf

    from explain_cli.model import heads

    spec = METHODS[method]
    if counterfactual and not spec.gradients:
        raise ExplainError(f"--counterfactual negates gradients, and {method} uses none")
    class_kernel = split_module.dense_head(cut) if spec.dense_head else None
    if spec.attention and (cut.attentions is None or cut.tokens is None):
        raise ExplainError(f"{method} needs a transformer: this model has no MultiHeadAttention layer on a patch grid")
    k = references or (1 if per_image else len(classes) or top_k)
    fixed = tf.constant(list(classes), tf.int32) if classes else None
    head = model.head or heads.detect(cut.output_shape, cut.activation)
    given_as = (per_image, regions, inside, references)
    if spec.attention:
        return _numpy_step(_attention_step(model, cut, spec, head, fixed, k, score, given_as))

    @compiled(_signature(model, *given_as), model)
    def step(images: Any, *given: Any) -> tuple[Any, ...]:
        x = model.preprocess(tf.cast(images, tf.float32))
        with held_watched(model, k) as held_tape:  # a model of several inputs: its inputs of values' gradients
            activations, skips = cut.features(x)
            activations, skips = tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips)
            b = tf.shape(activations)[0]
            tiled = tile(activations, k)
            tiled_skips = tuple(tile(s, k) for s in skips)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(tiled)
                raw = tf.cast(cut.head(tiled, tiled_skips), tf.float32)  # (k*b, ...): copy j of image i at j*b + i
                rows = read_rows(head, raw[:b], fixed, k, score, *_given(given_as, given))
                scores = rows.score(raw)
        gradients = None
        if spec.gradients:
            gradients = tape.gradient(scores, tiled)
            gradients = -gradients if counterfactual else gradients
        inputs = MethodInputs(
            activations=tiled,
            gradients=gradients,
            class_weights=tf.gather(tf.transpose(class_kernel), rows.row_class) if class_kernel is not None else None,
            images=tile(x, k) if spec.forward else None,
            classes=rows.row_class,
            targets=(lambda images, row: _one_row(rows, cut, images, row, b)) if spec.forward else None,
            max_masks=max_masks,
        )
        maps = spec.compute(inputs)  # (k*b, h, w)
        extras = {**rows.extras(k, b), **held_attributions(model, cut.through, x, rows.score, k, b,
                                                            (held_tape, scores))}
        return rows.shown, rows.chosen, regroup(scores, k, b), regroup(maps, k, b), extras

    return _numpy_step(step)


def _one_row(rows: Any, cut: split_module.Split, images: Any, row: Any, b: Any) -> Any:
    """Score-CAM's scores of one row's masked copies, run with its image's own held inputs (a model of several)."""
    with graph_module.holding([value[row % b][None] for value in graph_module.held_now()]):
        return rows.score_one(cut.through(images), row)


def _attention_step(model: LoadedModel, cut: split_module.Split, spec: Any, head: Any, fixed: Any, k: int,
                    score: str, given_as: tuple[bool, bool, bool, int]) -> Any:
    """The explain step of a method that reads attention scores: one forward pass gives the outputs and every
    attention layer's scores; no cut and no gradient."""
    import tensorflow as tf

    @compiled(_signature(model, *given_as), model)
    def step(images: Any, *given: Any) -> tuple[Any, ...]:
        raw, attentions = cut.attentions(model.preprocess(tf.cast(images, tf.float32)))
        raw = tf.cast(raw, tf.float32)
        b = tf.shape(raw)[0]
        rows = read_rows(head, raw, fixed, k, score, *_given(given_as, given))
        scores = rows.score(tile(raw, k))
        maps = spec.compute(MethodInputs(None, attentions=tuple(tile(a, k) for a in attentions), tokens=cut.tokens))
        return rows.shown, rows.chosen, regroup(scores, k, b), regroup(maps, k, b), rows.extras(k, b)

    return step


def compiled(signature: list[Any], model: Any = None) -> Callable[[Callable[..., Any]], Any]:
    """tf.function over a fixed signature, traced once whatever the batch size. Each compiled step is made once, on
    purpose, but every step made from the same code counts towards TensorFlow's "frequent retracing" warning (it keys
    on the code object), which a library making steps for several models and methods would set off for nothing: it is
    turned off for these functions alone. AutoGraph is off: nothing here branches on a tensor, Keras 3 layers are never
    converted anyway, and converting the rest cost every run 1.3 s before its first batch. A `model` of several
    inputs: the step also takes the inputs held as given (steps/holding.py)."""
    import tensorflow as tf

    def traced(function: Callable[..., Any], spec: list[Any]) -> Any:
        step = tf.function(function, input_signature=spec, reduce_retracing=True, autograph=False)
        step._omit_frequent_tracing_warning = True  # TensorFlow's own switch for it; private, so set, not relied on
        return step

    def compile_(function: Callable[..., Any]) -> Any:
        if model is not None and getattr(model, "held", ()):
            from explain_cli.steps.holding import holding_step

            return holding_step(function, signature, model, traced)
        return traced(function, signature)

    return compile_


def compile_saliency(
    model: LoadedModel,
    graph: graph_module.Graph,
    method: str,
    *,
    layer: str | None,
    classes: Sequence[int] = (),
    top_k: int = 1,
    samples: int = 25,
    noise: float = 0.15,
    steps: int = 64,
    seed: int = 0,
    per_image: bool = False,
    regions: bool = False,
    inside: bool = False,
    references: int = 0,
) -> Any:
    """uint8 batch -> BatchResult whose maps are pixel attributions at the model's input resolution.

    `layer` is where guided Grad-CAM takes its Grad-CAM. The returned callable has `.traced`.
    """
    import tensorflow as tf

    from explain_cli.methods.gradcam import gradcam
    from explain_cli.methods import PIXEL_METHODS
    from explain_cli.methods.saliency import PixelInputs

    attribute = PIXEL_METHODS[method]
    forward, _ = split_module.logits(graph)
    guided_forward, _ = split_module.logits(guided(graph))
    cut = split_module.split(graph, layer) if method == "guided-gradcam" and layer is not None else None
    k = references or (1 if per_image else len(classes) or top_k)
    fixed = tf.constant(list(classes), tf.int32) if classes else None
    head = head_of(model, graph)
    given_as = (per_image, regions, inside, references)

    @compiled(_signature(model, *given_as), model)
    def step(images: Any, *given: Any) -> tuple[Any, ...]:
        pixels = tf.cast(images, tf.float32)
        b = tf.shape(pixels)[0]
        x = model.preprocess(pixels)
        with held_watched(model, k) as held_tape:  # a model of several inputs: its inputs of values' gradients
            raw = tf.cast(forward(x), tf.float32)
            rows = read_rows(head, raw, fixed, k, "logit", *_given(given_as, given))
            scores = rows.score(tile(raw, k))
        tiled = tile(pixels, k)

        def gradient_through(network: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def gradient(x: Any) -> Any:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    score = rows.score(tf.cast(network(model.preprocess(x)), tf.float32))
                return tf.cast(tape.gradient(score, x), tf.float32)

            return gradient

        def gradcam_at_input_size() -> Any:
            activations, skips = cut.features(model.preprocess(tiled))
            activations, skips = tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(activations)
                score = rows.score(tf.cast(cut.head(activations, skips), tf.float32))
            maps = gradcam(MethodInputs(activations, tape.gradient(score, activations)))
            up = resized(maps[..., None], tf.shape(tiled)[1:-1])[..., 0]
            peak = tf.reduce_max(up, axis=grid_axes(tiled), keepdims=True)
            return up / tf.where(peak > 0, peak, tf.ones_like(peak))

        inputs = PixelInputs(
            images=tiled,
            gradient=gradient_through(forward),
            guided_gradient=gradient_through(guided_forward),
            gradcam=gradcam_at_input_size,
            samples=samples,
            noise=noise,
            steps=steps,
            seed=seed,
            span=255.0 if model.pixels == "uint8" else _spans(tiled),
        )
        maps = attribute(inputs)  # (k*b, H, W)
        extras = {**rows.extras(k, b), **held_attributions(model, forward, x, rows.score, k, b, (held_tape, scores))}
        return rows.shown, rows.chosen, regroup(scores, k, b), regroup(maps, k, b), extras

    return _numpy_step(step)


def _spans(images: Any) -> Any:
    """Each row's range, max − min (rows, 1, 1, 1): SmoothGrad's σ is a share of it for an input given as it stands."""
    import tensorflow as tf

    axes = tf.range(1, tf.rank(images))
    span = tf.reduce_max(images, axis=axes, keepdims=True) - tf.reduce_min(images, axis=axes, keepdims=True)
    return tf.where(span > 0, span, tf.ones_like(span))


def _signature(model: LoadedModel, per_image: bool, regions: bool = False, inside: bool = False,
               references: int = 0) -> list[Any]:
    """The explain step's inputs: a uint8 batch; with `per_image` each image's class (b,); with `regions` each image's
    region (b, H, W) at the input's resolution; with `inside` where each picture lies on the input (b, H, W); with
    `references` each image's k reference vectors (b, k, D)."""
    import tensorflow as tf

    plane = tf.TensorSpec([None, model.height, model.width], tf.float32)
    return [_input_spec(model)] + ([tf.TensorSpec([None], tf.int32)] if per_image else []) + (
        [plane] if regions else []) + ([plane] if inside else []) + (
        [tf.TensorSpec([None, references, None], tf.float32)] if references else [])


def _given(given_as: tuple[bool, bool, bool, int], given: Sequence[Any]) -> tuple[Any, Any, Any, Any]:
    """(each image's class, region, picture's place on the input and references, each or None) from the step's extra
    inputs, which `given_as` says it takes."""
    given = list(given)
    return tuple(given.pop(0) if wanted else None for wanted in given_as)  # type: ignore[return-value]


def _numpy_step(step: Any) -> Callable[..., BatchResult]:
    """The compiled step as numpy in, BatchResult out; `.traced` keeps the tf.function for counting traces."""

    def run(batch: np.ndarray, classes: np.ndarray | None = None, regions: np.ndarray | None = None,
            inside: np.ndarray | None = None, references: np.ndarray | None = None) -> BatchResult:
        given = [g for g in (classes, regions, inside, references) if g is not None]  # what the step takes
        probabilities, chosen, scores, maps, extras = step(batch, *given)
        return BatchResult(probabilities.numpy(), chosen.numpy(), scores.numpy(), maps.numpy(),
                           {name: value.numpy() for name, value in extras.items()})

    run.traced = step  # type: ignore[attr-defined]
    return run
