"""A segmentation's compiled steps: its prediction (each class's share of the pixels, each pixel's class, each class's
mean probability), each pixel's probabilities for perturbed images, and the regions evaluate scores over."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from explain_cli.model import cut as split_module
from explain_cli.model import graph as graph_module
from explain_cli.model.loading import LoadedModel
from explain_cli.steps.compiled import _input_spec, compiled, forward_step, head_of
from explain_cli.steps.rows import at_size


def compile_segmentation(model: LoadedModel, graph: graph_module.Graph,
                         inside: bool = False) -> Callable[..., tuple[np.ndarray, ...]]:
    """A segmentation's prediction: a batch of pixels -> (b, classes) each class's share of the pixels, (b, h, w) each
    pixel's class at the output's resolution, and (b, classes) each class's mean probability over where it is
    predicted (0 where it is nowhere). With `inside`, the step also takes where each picture lies on the input
    (b, H, W; a letterbox), and reads the shares and means there alone."""
    import tensorflow as tf

    from explain_cli.model import heads

    forward, _ = split_module.logits(graph, forward_only=True)
    head = head_of(model, graph)
    plane = [tf.TensorSpec([None, model.height, model.width], tf.float32)] if inside else []

    @compiled([_input_spec(model), *plane], model)
    def step(images: Any, *placed: Any) -> Any:
        raw = forward(model.preprocess(tf.cast(images, tf.float32)))
        classes = heads.pixel_classes(head, raw)
        where = heads.pixel_masks(head, raw)
        weights = at_size(placed[0], tf.shape(classes)[1:3]) if placed else None
        if weights is not None:
            where = where * weights[..., None]
        axes = list(range(1, len(model.grid) + 1))  # a picture's (h, w), a volume's (d, h, w)
        area = tf.reduce_sum(where, axis=axes)
        mean = tf.reduce_sum(heads.pixel_probabilities(head, raw) * where, axis=axes) / tf.maximum(area, 1.0)
        return heads.pixel_shares(head, raw, classes, weights), classes, mean

    return lambda batch, *placed: tuple(t.numpy() for t in step(batch, *placed))


def compile_pixel_probabilities(model: LoadedModel, graph: graph_module.Graph) -> Callable[[np.ndarray], np.ndarray]:
    """A segmentation's float pixels (perturbed images) -> (n, h, w, classes) each pixel's probabilities."""
    from explain_cli.model import heads

    step = forward_step(model, graph, "float32", heads.pixel_probabilities)
    return lambda batch: step(batch.astype(np.float32)).numpy()


def compile_regions(model: LoadedModel, graph: graph_module.Graph) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                              Callable[..., np.ndarray]]:
    """A segmentation's two steps for evaluate: uint8 batch -> (b, h, w, classes) where each class is predicted; and
    (float pixels (n, H, W, C), one image's regions (h, w, classes)) -> (n, classes) each class's mean probability over
    its region (0 where the region is empty)."""
    import tensorflow as tf

    from explain_cli.model import heads

    forward, _ = split_module.logits(graph, forward_only=True)
    head = head_of(model, graph)
    pixels = [None, *model.grid, model.channels]
    axes = list(range(len(model.grid)))  # a region's grid axes: (h, w), or a volume's (d, h, w)

    @compiled([tf.TensorSpec(pixels, getattr(tf, model.pixels))], model)
    def masks(images: Any) -> Any:
        return heads.pixel_masks(head, forward(model.preprocess(tf.cast(images, tf.float32))))

    @compiled([tf.TensorSpec(pixels, tf.float32), tf.TensorSpec([None] * (len(axes) + 1), tf.float32)], model)
    def region_mean(images: Any, regions: Any) -> Any:
        probability = heads.pixel_probabilities(head, forward(model.preprocess(images)))
        area = tf.reduce_sum(regions, axis=axes)
        return tf.reduce_sum(probability * regions[None], axis=[a + 1 for a in axes]) / tf.maximum(area, 1.0)

    return (lambda batch: masks(batch).numpy()), (lambda batch, regions: region_mean(batch, regions).numpy())
