"""The compiled steps: predictions, and explanations for a batch in one feature pass.

The feature part runs outside the gradient tape; only the head runs under it. For k classes per
image the head runs on the activations tiled k times, so one backward pass yields every
(image, class) gradient at once, and no image's gradient is ever mixed with another's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli import graph as graph_module
from explain_cli import split as split_module
from explain_cli.guided import guided
from explain_cli.errors import ExplainError
from explain_cli.methods import METHODS, MethodInputs
from explain_cli.models import LoadedModel


@dataclass(frozen=True)
class BatchResult:
    """What one compiled explain step returns for a batch of b images and k classes each."""

    probabilities: np.ndarray  # (b, classes)
    classes: np.ndarray  # (b, k) class numbers explained
    scores: np.ndarray  # (b, k) the differentiated score: logit or probability
    maps: np.ndarray  # (b, k, h, w) the method's maps at the layer's resolution, not normalised


def graph_of(model: LoadedModel) -> graph_module.Graph:
    """The model's graph as explain replays it: in bfloat16 when the model's precision says so; BatchNorm unfolded for
    a model in memory, whose weights may change after the steps are compiled."""
    graph = graph_module.flatten(model.keras_model)
    return dataclasses.replace(graph, precision=model.precision, foldable=graph.foldable and not model.live)


def default_layer(graph: graph_module.Graph, model: LoadedModel) -> str:
    """The registered layer of a built-in model; for a transformer, the input of its last block; else the last
    feature map (or tokens on a grid) larger than 1×1."""
    if model.default_layer is not None:
        return model.default_layer
    if graph.transformer_default is not None:
        return graph.transformer_default
    spatial = [p for p in graph.explainable() if all(d is None or d > 1 for d in p.grid_shape[:2])]
    if not spatial:
        raise ExplainError(f"model {model.name!r} has no layer with a 4-D output or tokens on a grid to explain")
    return spatial[-1].name


def _input_spec(model: LoadedModel) -> Any:
    import tensorflow as tf

    return tf.TensorSpec([None, model.height, model.width, model.channels], tf.uint8)


def _probabilities(logits: Any, activation: str) -> Any:
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    if activation == "softmax":
        return tf.nn.softmax(logits, axis=-1)
    if activation == "sigmoid":
        return tf.sigmoid(logits)
    # A model that ends in logits: its probabilities are the softmax, as its loss would have it.
    return tf.nn.softmax(logits, axis=-1)


def compile_predict(model: LoadedModel, graph: graph_module.Graph, pixels: str = "uint8") -> Callable[[np.ndarray], np.ndarray]:
    """A batch (b, h, w, c) of pixels in 0-255, uint8 (or "float32": perturbed images) -> class
    probabilities (b, classes), through one traced graph.

    The returned callable has `.traced` (the tf.function) for counting traces.
    """
    import tensorflow as tf

    forward, activation = split_module.logits(graph)
    spec = tf.TensorSpec([None, model.height, model.width, model.channels], getattr(tf, pixels))

    @compiled([spec])
    def step(images: Any) -> Any:
        return _probabilities(forward(model.preprocess(tf.cast(images, tf.float32))), activation)

    def run(batch: np.ndarray) -> np.ndarray:
        return step(batch).numpy()

    run.traced = step  # type: ignore[attr-defined]
    return run


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
) -> Any:
    """uint8 batch -> BatchResult, explaining `classes` for every image, or else each image's top k; with
    `per_image`, the step also takes each image's own class (b,) and explains that one.

    `counterfactual` negates the gradients (Grad-CAM §counterfactual explanations: what would raise
    the score if removed). The returned callable has `.traced` (a tf.function) for counting traces.
    """
    import tensorflow as tf

    spec = METHODS[method]
    if counterfactual and not spec.gradients:
        raise ExplainError(f"--counterfactual negates gradients, and {method} uses none")
    class_kernel = split_module.dense_head(cut) if spec.dense_head else None
    if spec.attention and (cut.attentions is None or cut.tokens is None):
        raise ExplainError(f"{method} needs a transformer: this model has no MultiHeadAttention layer on a patch grid")
    k = 1 if per_image else len(classes) or top_k
    fixed = tf.constant(list(classes), tf.int32) if classes else None
    if spec.attention:
        return _numpy_step(_attention_step(model, cut, spec, fixed, k, score, per_image))

    def logits_of(x: Any) -> Any:
        activations, skips = cut.features(x)
        return cut.head(tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips))

    @compiled(_signature(model, per_image))
    def step(images: Any, *given: Any) -> tuple[Any, Any, Any, Any]:
        x = model.preprocess(tf.cast(images, tf.float32))
        activations, skips = cut.features(x)
        activations, skips = tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips)
        b = tf.shape(activations)[0]
        tiled = _tile(activations, k)
        tiled_skips = tuple(_tile(s, k) for s in skips)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(tiled)
            logits = tf.cast(cut.head(tiled, tiled_skips), tf.float32)  # (k*b, classes): copy j of image i at j*b + i
            probabilities = _probabilities(logits[:b], cut.activation)
            chosen, row_class = _choose(probabilities, fixed, k, *given)
            source = logits if score == "logit" else _probabilities(logits, cut.activation)
            scores = tf.gather(source, row_class, batch_dims=1)
        gradients = None
        if spec.gradients:
            gradients = tape.gradient(scores, tiled)
            gradients = -gradients if counterfactual else gradients
        inputs = MethodInputs(
            activations=tiled,
            gradients=gradients,
            class_weights=tf.gather(tf.transpose(class_kernel), row_class) if class_kernel is not None else None,
            images=_tile(x, k) if spec.forward else None,
            classes=row_class,
            logits=logits_of,
            max_masks=max_masks,
        )
        maps = spec.compute(inputs)  # (k*b, h, w)
        return probabilities, chosen, _per_image(scores, k, b), _per_image(maps, k, b)

    return _numpy_step(step)


def _attention_step(model: LoadedModel, cut: split_module.Split, spec: Any, fixed: Any, k: int, score: str,
                    per_image: bool) -> Any:
    """The explain step of a method that reads attention scores: one forward pass gives the logits and every
    attention layer's scores; no cut and no gradient."""
    import tensorflow as tf

    @compiled(_signature(model, per_image))
    def step(images: Any, *given: Any) -> tuple[Any, Any, Any, Any]:
        logits, attentions = cut.attentions(model.preprocess(tf.cast(images, tf.float32)))
        logits = tf.cast(logits, tf.float32)
        b = tf.shape(logits)[0]
        probabilities = _probabilities(logits, cut.activation)
        chosen, row_class = _choose(probabilities, fixed, k, *given)
        source = logits if score == "logit" else probabilities
        scores = tf.gather(_tile(source, k), row_class, batch_dims=1)
        maps = spec.compute(MethodInputs(None, attentions=tuple(_tile(a, k) for a in attentions), tokens=cut.tokens))
        return probabilities, chosen, _per_image(scores, k, b), _per_image(maps, k, b)

    return step


def compiled(signature: list[Any]) -> Callable[[Callable[..., Any]], Any]:
    """tf.function over a fixed signature, traced once whatever the batch size. Each compiled step is made once, on
    purpose, but every step made from the same code counts towards TensorFlow's "frequent retracing" warning (it keys
    on the code object), which a library making steps for several models and methods would set off for nothing: it is
    turned off for these functions alone."""
    import tensorflow as tf

    def compile_(function: Callable[..., Any]) -> Any:
        step = tf.function(function, input_signature=signature, reduce_retracing=True)
        step._omit_frequent_tracing_warning = True  # TensorFlow's own switch for it; private, so set, not relied on
        return step

    return compile_


def _tile(tensor: Any, k: int) -> Any:
    import tensorflow as tf

    if k == 1:
        return tensor
    return tf.tile(tensor, tf.concat([[k], tf.ones([tf.rank(tensor) - 1], tf.int32)], 0))


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
) -> Any:
    """uint8 batch -> BatchResult whose maps are pixel attributions at the model's input resolution.

    `layer` is where guided Grad-CAM takes its Grad-CAM. The returned callable has `.traced`.
    """
    import tensorflow as tf

    from explain_cli.methods.gradcam import gradcam
    from explain_cli.methods.saliency import PIXEL_METHODS, PixelInputs

    attribute = PIXEL_METHODS[method]
    forward, activation = split_module.logits(graph)
    guided_forward, _ = split_module.logits(guided(graph))
    cut = split_module.split(graph, layer) if method == "guided-gradcam" else None
    k = 1 if per_image else len(classes) or top_k
    fixed = tf.constant(list(classes), tf.int32) if classes else None

    @compiled(_signature(model, per_image))
    def step(images: Any, *given: Any) -> tuple[Any, Any, Any, Any]:
        pixels = tf.cast(images, tf.float32)
        b = tf.shape(pixels)[0]
        logits = tf.cast(forward(model.preprocess(pixels)), tf.float32)
        probabilities = _probabilities(logits, activation)
        chosen, row_class = _choose(probabilities, fixed, k, *given)
        rows = _tile(pixels, k)

        def gradient_through(network: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def gradient(x: Any) -> Any:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    score = tf.gather(tf.cast(network(model.preprocess(x)), tf.float32), row_class, batch_dims=1)
                return tf.cast(tape.gradient(score, x), tf.float32)

            return gradient

        def gradcam_at_input_size() -> Any:
            activations, skips = cut.features(model.preprocess(rows))
            activations, skips = tf.cast(activations, tf.float32), tuple(tf.cast(t, tf.float32) for t in skips)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(activations)
                score = tf.gather(tf.cast(cut.head(activations, skips), tf.float32), row_class, batch_dims=1)
            maps = gradcam(MethodInputs(activations, tape.gradient(score, activations)))
            up = tf.image.resize(maps[..., None], tf.shape(rows)[1:3], method="bilinear")[..., 0]
            peak = tf.reduce_max(up, axis=(1, 2), keepdims=True)
            return up / tf.where(peak > 0, peak, tf.ones_like(peak))

        inputs = PixelInputs(
            images=rows,
            gradient=gradient_through(forward),
            guided_gradient=gradient_through(guided_forward),
            gradcam=gradcam_at_input_size,
            samples=samples,
            noise=noise,
            steps=steps,
            seed=seed,
        )
        maps = attribute(inputs)  # (k*b, H, W)
        return probabilities, chosen, tf.gather(logits, chosen, batch_dims=1), _per_image(maps, k, b)

    return _numpy_step(step)


def _signature(model: LoadedModel, per_image: bool) -> list[Any]:
    """The explain step's inputs: a uint8 batch, and with `per_image` each image's class (b,)."""
    import tensorflow as tf

    return [_input_spec(model)] + ([tf.TensorSpec([None], tf.int32)] if per_image else [])


def _choose(probabilities: Any, fixed: Any, k: int, per_image: Any = None) -> tuple[Any, Any]:
    """The classes to explain: (b, k) per image (each image's own, the given ones, or the top k) and
    (k*b,) per row."""
    import tensorflow as tf

    b = tf.shape(probabilities)[0]
    if per_image is not None:
        chosen = per_image[:, None]
    elif fixed is None:
        chosen = tf.math.top_k(probabilities, k=k).indices
    else:
        chosen = tf.broadcast_to(fixed, [b, k])
    return chosen, tf.reshape(tf.transpose(chosen), [-1])


def _per_image(rows: Any, k: int, b: Any) -> Any:
    """Rows ordered class-major (copy j of image i at j*b + i) regrouped as (b, k, ...)."""
    import tensorflow as tf

    grouped = tf.reshape(rows, tf.concat([[k, b], tf.shape(rows)[1:]], 0))
    return tf.transpose(grouped, tf.concat([[1, 0], tf.range(2, tf.rank(grouped))], 0))


def _numpy_step(step: Any) -> Callable[[np.ndarray], BatchResult]:
    """The compiled step as numpy in, BatchResult out; `.traced` keeps the tf.function for counting traces."""

    def run(batch: np.ndarray, classes: np.ndarray | None = None) -> BatchResult:
        probabilities, chosen, scores, maps = step(batch) if classes is None else step(batch, classes)
        return BatchResult(probabilities.numpy(), chosen.numpy(), scores.numpy(), maps.numpy())

    run.traced = step  # type: ignore[attr-defined]
    return run
