"""The compiled steps of `explain detect`: look (find each image's predictions, keeping the features at the cut),
explain (each detection's map from one backward pass over all of a batch's boxes), and judge (masked or perturbed
images scored against fixed boxes: D-RISE's similarity and evaluate's matched score).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from explain_cli.tasks import detection_outputs as detector
from explain_cli.model import graph as graph_module
from explain_cli.model import cut as split_module
from explain_cli.errors import ExplainError
from explain_cli.steps.compiled import PASSING, compiled
from explain_cli.methods import METHODS, MethodInputs
from explain_cli.model.loading import LoadedModel


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
    scores: graph_module.Graph | None = None  # the graph up to the class scores, whose levels prune a box's pass
    explained: dict[str, Rows] = field(default_factory=dict)

    def explain(self, method: str) -> Rows:
        """(looked, row image, row class, weights) -> (each row's target (R,), its map (R, h, w)) by `method`,
        compiled once."""
        if self.cuts is None:
            raise ExplainError(f"{method} needs a layer, and this detector has none to explain at")
        if method not in self.explained:
            levels = self.pruning_levels if METHODS[method].gradients else None
            self.explained[method] = _explain(*self.cuts, method, self.classes, levels)
        return self.explained[method]

    @functools.cached_property
    def pruning_levels(self) -> tuple[Any, ...] | None:
        """The pyramid levels a box's backward pass is pruned to (tasks/detection_levels.py), found once: None where
        the class scores are not made that way or pruning would not pay."""
        if self.cuts is None or self.scores is None or self.scores.output is None:
            return None
        cut, scores_cut = self.cuts
        if cut.skip_values is None or scores_cut.value is None:
            return None
        from explain_cli.tasks import detection_levels

        found = detection_levels.find(self.scores, scores_cut.head_steps, self.scores.output, self.classes)
        return found if found and detection_levels.worth_pruning(found) else None


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
        @compiled([tf.TensorSpec(pixels, getattr(tf, model.pixels))])
        def predictions(images: Any) -> tuple[Any, Any]:
            return read(whole(model.preprocess(tf.cast(images, tf.float32))))

        def look_only(batch: np.ndarray) -> Looked:
            found_boxes, found_probabilities = predictions(batch)
            return Looked(found_boxes.numpy(), found_probabilities.numpy())

        return Steps(look_only, judged)
    # A detector's head (its pyramid, and class and box heads on every level) is half its work or more, so under
    # bf16 it computes in bfloat16 too, as it does in the whole forward passes that D-RISE and evaluate judge by.
    cut = split_module.split(joined, layer, bf16_head=True)
    scores = detector.scores_only(graph, found)
    return Steps(_look(model, cut, read, pixels), judged, (cut, split_module.split(scores, layer, bf16_head=True)),
                 found.classes, scores)


def _look(model: LoadedModel, cut: split_module.Split, read: Callable[[Any], tuple[Any, Any]],
          pixels: list[Any]) -> Callable[[np.ndarray], Looked]:
    import tensorflow as tf

    @compiled([tf.TensorSpec(pixels, getattr(tf, model.pixels))])
    def look(images: Any) -> tuple[Any, ...]:
        activations, skips = cut.features(model.preprocess(tf.cast(images, tf.float32)))
        raw = cut.head(tf.cast(activations, tf.float32), tuple(tf.cast(s, tf.float32) for s in skips))
        found_boxes, found_probabilities = read(raw)
        return found_boxes, found_probabilities, activations, skips

    def run(batch: np.ndarray) -> Looked:
        found_boxes, found_probabilities, activations, skips = look(batch)
        return Looked(found_boxes.numpy(), found_probabilities.numpy(), (activations, tuple(skips)))

    return run


def _explain(cut: split_module.Split, scores_cut: split_module.Split, method: str, class_count: int,
             levels: tuple[Any, ...] | None = None) -> Rows:
    """(looked, row image (R,), row class (R,), weights (R, A)) -> each row's target Σ_a w_a · z_a,c (R,) and map
    (R, h, w), from the class scores alone where the cut lets the scores' head be run apart from the boxes'.

    Each image's head runs once and its rows' gradients come from one vectorised backward pass, so a box costs a
    backward pass through the head. Where TensorFlow cannot vectorise the head's backward pass (an operation pfor has
    no rule for, as in D-FINE's decoder), the rows' heads run on copies of their images' features instead, under one
    tape: a box then costs a forward pass and a backward pass. Where the class scores come from a head run on each
    level of a pyramid (`levels`), a gradient method's rows are pruned to their own levels and windows instead
    (tasks/detection_levels.py)."""
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

    rows = Rows(_vectorised(scores_head, spec), _tiled(scores_head, spec))
    if spec.gradients and levels and scores_cut.value is not None and cut.skip_values is not None:
        from explain_cli.tasks import detection_levels

        rows.pruned = detection_levels.pruned(scores_cut.head_steps, levels, scores_cut.value, cut.skip_values, spec)
    return rows


Explain = Callable[["Looked", np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Rows:
    """A method's rows explained the vectorised way while TensorFlow can, else tiled; `vectorised` says which."""

    by_image: Explain
    tiled: Explain
    vectorised: bool = True
    pruned: Explain | None = None  # each row through its own levels and windows (tasks/detection_levels.py)

    def __call__(self, looked: Looked, images: np.ndarray, classes: np.ndarray,
                 weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pruned is not None:
            try:
                return self.pruned(looked, images, classes, weights)
            except ValueError:  # pfor has no rule for an operation of the pyramid
                self.pruned = None
        if self.vectorised:
            try:
                return self.by_image(looked, images, classes, weights)
            except ValueError:  # pfor's "no vectorization defined for ...", raised as the step is traced
                self.vectorised = False
        return self.tiled(looked, images, classes, weights)


def _vectorised(scores_head: Callable[..., Any], spec: Any) -> Explain:
    """The rows of each image in turn: its head once, every row's gradient from one backward pass batched over the
    rows (tf.vectorized_map over what flows back, one one-hot row each)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def explain(activations: Any, skips: tuple[Any, ...], classes: Any, weights: Any) -> tuple[Any, Any]:
        activations = tf.cast(activations, tf.float32)  # one image's: (1, h, w, channels)
        skips = tuple(tf.cast(s, tf.float32) for s in skips)
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(activations)
            scores = tf.cast(scores_head(activations, skips), tf.float32)[0]  # (A, C)
            target = tf.reduce_sum(weights * tf.transpose(tf.gather(scores, classes, axis=1)), axis=1)  # (R,)
        gradients = None
        if spec.gradients:  # pfor's fallback, a while loop, crashed the process on D-FINE's head: an error instead
            gradients = tf.vectorized_map(lambda row: tape.gradient(target, activations, output_gradients=row)[0],
                                          tf.eye(tf.size(classes)), fallback_to_while_loop=False)
        rows = tf.repeat(activations, tf.size(classes), axis=0)
        return target, spec.compute(MethodInputs(rows, gradients, classes=classes))

    def run(looked: Looked, images: np.ndarray, classes: np.ndarray,
            weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        activations, skips = looked.features
        targets, maps = [], []
        for rows in np.split(np.arange(len(images)), np.flatnonzero(np.diff(images)) + 1):  # each image's run of rows
            image = int(images[rows[0]])
            target, made = explain(activations[image:image + 1], tuple(s[image:image + 1] for s in skips),
                                   tf.constant(classes[rows], tf.int32), tf.constant(weights[rows], tf.float32))
            targets.append(target.numpy())
            maps.append(made.numpy())
        return np.concatenate(targets), np.concatenate(maps)

    return run


def _tiled(scores_head: Callable[..., Any], spec: Any) -> Explain:
    """All rows at once: the head on each row's copy of its image's features, one backward pass for them all."""
    import tensorflow as tf

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
