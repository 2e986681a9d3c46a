"""Seeing inside the network: layer activations, and class model visualisation by gradient ascent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.model import graph as graph_module
from explain_cli.model import cut as split_module
from explain_cli.steps.compiled import compiled
from explain_cli.model.loading import LoadedModel

_DRAWN_KINDS = ("Conv", "Pool")  # layer class names containing these are drawn by default


def default_activation_layers(graph: graph_module.Graph, cap: int) -> tuple[list[str], int]:
    """Every convolution and pooling layer with a 4-D output, at most `cap` spread evenly; and how many there were."""
    names = [p.name for p in graph.explainable() if not p.is_tokens and any(k in p.kind for k in _DRAWN_KINDS)]
    if len(names) <= cap:
        return names, len(names)
    picks = np.linspace(0, len(names) - 1, cap).round().astype(int)
    return [names[i] for i in sorted(set(picks))], len(names)


def compile_activations(model: LoadedModel, graph: graph_module.Graph, layers: Sequence[str]) -> Callable:
    """uint8 batch -> [ (b, h, w, c) per layer ], all layers from one forward pass."""
    import tensorflow as tf

    outputs = split_module.outputs_of(graph, layers)

    @compiled([tf.TensorSpec([None, model.height, model.width, model.channels], tf.uint8)], model)
    def step(images: Any) -> list[Any]:
        return outputs(model.preprocess(tf.cast(images, tf.float32)))

    return lambda batch: [t.numpy().astype(np.float32) for t in step(batch)]


@dataclass(frozen=True)
class ClassVizSettings:
    steps: int = 200
    lr: float = 1.0  # pixels (of 0-255) per step, along a class gradient normalised to unit RMS
    l2: float = 0.5  # λ: how hard each pixel is pulled back to mid grey, relative to the class's pull
    jitter: int = 0  # pixels of random shift before each step (0: none)
    blur_every: int = 0  # blur the image every K steps (0: never)
    blur_sigma: float = 0.5
    seed: int = 0


def class_visualisation(
    model: LoadedModel, graph: graph_module.Graph, class_index: int, settings: ClassVizSettings,
    every: int = 0,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], list[float]]:
    """Simonyan et al. 2014, made scale-free: x ← clip(x + η (∇S_c/rms(∇S_c) − 2λ (x − ½)), 0, 1).

    x is the image as fractions of the pixel range (0 black, 1 white), so the step η = lr / 255 and
    the box the image stays in mean the same whatever the model does to its input. The class score's
    gradient is taken in units of its own RMS, so the L2 pull towards mid grey, λ‖x − ½‖², weighs
    the same against it whether the model divides by 255 inside, subtracts ImageNet means, or has
    large or small logits. The image is kept within [0, 1] at every step: the image optimised is the
    one written.

    Returns the final image (uint8), the intermediate ones every `every` steps, and the class logit
    of the starting noise followed by the logit after each step, the last one of the uint8 image
    written. Deterministic for a given seed.
    """
    import tensorflow as tf

    forward, _ = split_module.logits(graph)
    shape = (1, model.height, model.width, model.channels)
    rng = np.random.default_rng(settings.seed)
    image = tf.Variable(np.clip(0.5 + rng.normal(0.0, 8.0 / 255.0, shape), 0.0, 1.0).astype(np.float32))
    blur = _gaussian_kernel(settings.blur_sigma, model.channels) if settings.blur_every else None
    eta = settings.lr / 255.0

    def logit(x: Any) -> Any:
        return forward(model.preprocess(x * 255.0))[0, class_index]

    @tf.function(autograph=False)
    def ascend(shift: Any) -> Any:
        shifted = tf.roll(image, shift, axis=[1, 2])
        with tf.GradientTape() as tape:
            tape.watch(shifted)
            score = logit(shifted)
        gradient = tf.roll(tape.gradient(score, shifted), -shift, axis=[1, 2])
        pull = gradient / (tf.sqrt(tf.reduce_mean(tf.square(gradient))) + 1e-12)
        image.assign(tf.clip_by_value(image + eta * (pull - 2.0 * settings.l2 * (image - 0.5)), 0.0, 1.0))
        return logit(image)

    snapshots, logits = [], [float(logit(image))]
    for step in range(1, settings.steps + 1):
        shift = rng.integers(-settings.jitter, settings.jitter + 1, 2) if settings.jitter else np.zeros(2, int)
        logits.append(float(ascend(tf.constant(shift, tf.int32))))
        if blur is not None and step % settings.blur_every == 0:
            image.assign(tf.nn.depthwise_conv2d(image, blur, [1, 1, 1, 1], "SAME"))
        if every and step % every == 0 and step != settings.steps:
            snapshots.append((step, _to_uint8(image.numpy()[0])))
    final = _to_uint8(image.numpy()[0])
    logits[-1] = float(logit(tf.constant(final.reshape(shape), tf.float32) / 255.0))
    return final, snapshots, logits


def _to_uint8(x: np.ndarray) -> np.ndarray:
    pixels = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def _gaussian_kernel(sigma: float, channels: int) -> Any:
    import tensorflow as tf

    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    line = np.exp(-(x**2) / (2 * sigma**2))
    kernel = np.outer(line, line) / np.outer(line, line).sum()
    return tf.constant(np.repeat(kernel[:, :, None, None], channels, axis=2))
