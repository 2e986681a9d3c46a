"""The compiled steps of `explain detect`: look (find each image's predictions, keeping the features at the cut),
explain (each detection's map from one backward pass over all of a batch's boxes), and judge (masked or perturbed
images scored against fixed boxes: D-RISE's similarity and evaluate's matched score).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from explain_cli import detector
from explain_cli import graph as graph_module
from explain_cli import split as split_module
from explain_cli.errors import ExplainError
from explain_cli.explainer import PASSING, compiled
from explain_cli.methods import METHODS, MethodInputs
from explain_cli.models import LoadedModel


@dataclass(frozen=True)
class Looked:
    """A batch's predictions before suppression, and (for a method with a layer) its features at the cut."""

    boxes: np.ndarray  # (b, A, 4) xyxy in the input's pixels
    probabilities: np.ndarray  # (b, A, C)
    features: Any = None  # the cut's activations and skips, as tensors, for `explain`


def default_layer(graph: graph_module.Graph, found: detector.Format) -> str:
    """Where a detector's maps are taken by default: the last feature map (larger than 1 × 1) that every branch of its
    class scores depends on (a feature pyramid's levels all read the backbone's last stage; a one-level head, its
    last shared map), so that every box's score reaches it."""
    branches = detector.score_makers(graph, dict(graph.outputs)[found.scores_output])
    made_by = {n: s for s in graph.steps for n in s.outputs}
    common = set.intersection(*({id(s) for s in graph_module.needed(graph.steps, {b})} for b in branches))
    common -= {id(made_by[b]) for b in branches if b in made_by}  # the layers that score the classes themselves
    calls = Counter(s.name for s in graph.steps)  # a layer called once per level is no one place to cut
    shared = {s.name for s in graph.steps if id(s) in common and calls[s.name] == 1}
    spatial = [p for p in graph.explainable() if p.step in shared and not p.path and p.kind not in PASSING
               and all(d is None or d > 1 for d in p.grid_shape[:2])]
    if not spatial:
        raise ExplainError("the detector has no feature map that all its class scores depend on: name one with --layer")
    return spatial[-1].name


def default_if_detector(model: Any, graph: graph_module.Graph, height: int, width: int) -> str | None:
    """The layer `explain detect` explains a model at by default, where the model is a detector it reads (None: it
    is not one)."""
    try:
        return default_layer(graph, detector.read(model, graph, height, width))
    except ExplainError:
        return None


@dataclass
class Steps:
    look: Callable[[np.ndarray], Looked]
    judge: Callable[..., tuple[np.ndarray, np.ndarray]]  # (float pixels, target boxes, their probabilities, classes)
    # -> (similarity (n, T), matched score (n, T))
    cuts: tuple[split_module.Split, split_module.Split] | None = None  # the joined model's and the scores' own
    classes: int = 0
    explained: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def explain(self, method: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
        """(looked, row image, row class, weights) -> (each row's target (R,), its map (R, h, w)) by `method`,
        compiled once."""
        if self.cuts is None:
            raise ExplainError(f"{method} needs a layer, and this detector has none to explain at")
        if method not in self.explained:
            self.explained[method] = _explain(*self.cuts, method, self.classes)
        return self.explained[method]


def build(model: LoadedModel, graph: graph_module.Graph, found: detector.Format, layer: str | None) -> Steps:
    """The steps of a detector cut at `layer` (None: forward passes alone)."""
    import tensorflow as tf

    joined = detector.joined(graph, found)
    decode = detector.decode(found, model.height, model.width)
    whole, _ = split_module.logits(joined, forward_only=True)
    pixels = [None, model.height, model.width, model.channels]

    def read(raw: Any) -> tuple[Any, Any]:
        raw = tf.cast(raw, tf.float32)
        return decode(raw[..., :4]), detector.probabilities(found, raw[..., 4:])

    @compiled([tf.TensorSpec(pixels, tf.float32), tf.TensorSpec([None, 4], tf.float32),
               tf.TensorSpec([None, found.classes], tf.float32), tf.TensorSpec([None], tf.int32)])
    def judge(images: Any, targets: Any, target_probabilities: Any, classes: Any) -> tuple[Any, Any]:
        found_boxes, found_probabilities = read(whole(model.preprocess(images)))
        return (detector.similarity(found_boxes, found_probabilities, targets, target_probabilities),
                detector.matched_score(found_boxes, found_probabilities, targets, classes))

    def judged(images: np.ndarray, targets: np.ndarray, probabilities: np.ndarray,
               classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        similar, matched = judge(images.astype(np.float32), targets.astype(np.float32),
                                 probabilities.astype(np.float32), classes.astype(np.int32))
        return similar.numpy(), matched.numpy()

    if layer is None:
        @compiled([tf.TensorSpec(pixels, tf.uint8)])
        def predictions(images: Any) -> tuple[Any, Any]:
            return read(whole(model.preprocess(tf.cast(images, tf.float32))))

        def look_only(batch: np.ndarray) -> Looked:
            found_boxes, found_probabilities = predictions(batch)
            return Looked(found_boxes.numpy(), found_probabilities.numpy())

        return Steps(look_only, judged)
    cut = split_module.split(joined, layer)
    return Steps(_look(model, cut, read, pixels), judged,
                 (cut, split_module.split(detector.scores_only(graph, found), layer)), found.classes)


def _look(model: LoadedModel, cut: split_module.Split, read: Callable[[Any], tuple[Any, Any]],
          pixels: list[Any]) -> Callable[[np.ndarray], Looked]:
    import tensorflow as tf

    @compiled([tf.TensorSpec(pixels, tf.uint8)])
    def look(images: Any) -> tuple[Any, ...]:
        activations, skips = cut.features(model.preprocess(tf.cast(images, tf.float32)))
        raw = cut.head(tf.cast(activations, tf.float32), tuple(tf.cast(s, tf.float32) for s in skips))
        found_boxes, found_probabilities = read(raw)
        return found_boxes, found_probabilities, activations, skips

    def run(batch: np.ndarray) -> Looked:
        found_boxes, found_probabilities, activations, skips = look(batch)
        return Looked(found_boxes.numpy(), found_probabilities.numpy(), (activations, tuple(skips)))

    return run


def _explain(cut: split_module.Split, scores_cut: split_module.Split, method: str,
             class_count: int) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """(looked, row image (R,), row class (R,), weights (R, A)) -> each row's target Σ_a w_a · z_a,c (R,) and map
    (R, h, w). The rows' heads run on the features gathered by image, under one tape: the class scores alone (the
    boxes' weights are fixed), where the cut lets the scores' head be run apart from the boxes'."""
    import tensorflow as tf

    spec = METHODS[method]
    if spec.dense_head or spec.forward or spec.attention:
        raise ExplainError(f"{method} does not explain a detection: use a gradient method, eigencam or drise")
    if cut.skip_values is not None and scores_cut.skip_values is not None:
        picked = [cut.skip_values.index(n) for n in scores_cut.skip_values]

        def scores_head(activations: Any, skips: tuple[Any, ...]) -> Any:
            return scores_cut.head(activations, tuple(skips[i] for i in picked))
    else:
        def scores_head(activations: Any, skips: tuple[Any, ...]) -> Any:
            return cut.head(activations, skips)[..., 4:4 + class_count]

    @tf.function(reduce_retracing=True, autograph=False)
    def explain(activations: Any, skips: tuple[Any, ...], images: Any, classes: Any, weights: Any) -> tuple[Any, Any]:
        rows = tf.gather(tf.cast(activations, tf.float32), images)
        row_skips = tuple(tf.gather(tf.cast(s, tf.float32), images) for s in skips)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(rows)
            scores = tf.cast(scores_head(rows, row_skips), tf.float32)  # (R, A, C)
            target = tf.reduce_sum(weights * tf.gather(scores, classes, axis=2, batch_dims=1), axis=1)
        gradients = tape.gradient(target, rows) if spec.gradients else None
        return target, spec.compute(MethodInputs(rows, gradients, classes=classes))

    def run(looked: Looked, images: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        activations, skips = looked.features
        target, maps = explain(activations, skips, tf.constant(images, tf.int32), tf.constant(classes, tf.int32),
                               tf.constant(weights, tf.float32))
        return target.numpy(), maps.numpy()

    return run
