"""A detection's backward pass cut down to what its target reads: the pyramid levels its predictions are on, and on
each level the window of the class head its predictions' scores can see.

A box's target Σ_a w_a · z_a,c reads the class scores of the few predictions a that overlap it. A detector's scores
output gathers (reshapes, joins) values made by one step per level of its feature pyramid: the class head run on that
level's map. The tape differentiates only what a target reads, so a box's gradient is taken through the levels its
predictions are on alone. And a class head of stride-1 convolutions is translation-equivariant with a finite reach ρ:
its scores at a window of the level's map depend only on the window widened by ρ. So each box's class head runs,
forward and backward, on that crop of the level's map: the same numbers, for every value its scores read is
computed from inside the crop, as it is in the whole map. Only the pyramid, from the cut to the levels' maps, is
differentiated at full size, in one pass batched over the boxes.

A level's reach is measured on its own head (the gradient's footprint of one cell) and checked (the head on crops
gives the whole map's numbers, in the middle and at a corner); a level whose head fails (a GroupNorm, attention, a
DETR's queries), or whose map is too small to show it, is run whole. A class head so small that a call per box and
level costs more than it saves is not pruned at all (worth_pruning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from explain_cli.model import graph as graph_module
from explain_cli.methods import MethodInputs
from explain_cli.tasks import detection_outputs as detector

Explain = Callable[[Any, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# Pruning costs a call per box and level (about a millisecond); below this many multiply-adds in a box's whole class
# head (its weights × its levels' cells, as a convolution's are) one batched backward pass over the whole head is faster.
PRUNED_ABOVE = 10 ** 8


@dataclass(frozen=True)
class Level:
    """One step that computes some of the class scores: the class head on one level of the pyramid."""

    step: graph_module.Step
    source: int  # the value it reads: the level's map (1, h, w, channels)
    predictions: np.ndarray  # (A_m,) the predictions it scores
    elements: np.ndarray  # (A_m, C) where each one's score of each class sits in its output, flattened per image
    grid: tuple[int, int, int]  # its output's (h, w, K)
    reach: int | None  # ρ: its scores at a cell read the map within ρ cells (None: run whole)


def find(graph: graph_module.Graph, head: tuple[graph_module.Step, ...], scores: int,
         classes: int) -> tuple[Level, ...] | None:
    """The levels of a cut's scores head (None where its scores are not gathered from steps of one map each that
    give whole rows of classes, or its shapes are not fixed)."""
    gathering, makers = detector.gathering(head, scores)
    made_by = {n: s for s in head for n in s.outputs}
    steps = [made_by[n] for n in makers if n in made_by]
    if graph.channels_first or len(steps) != len(makers) or \
            any(len(s.inputs) != 1 or len(s.outputs) != 1 for s in steps):
        return None
    everywhere = {n: s for s in (*graph.steps, *head) for n in s.outputs}
    shapes = [_shape(everywhere, s.outputs[0]) for s in steps]
    sources = [_shape(everywhere, s.inputs[0][1]) for s in steps]
    if any(len(shape) != 3 for shape in (*shapes, *sources)):
        return None
    ids = _where_scores_sit(gathering, makers, shapes, scores)
    if ids is None or ids.shape[-1] != classes:
        return None
    found, start = [], 0
    for step, shape, source in zip(steps, shapes, sources):
        size = int(np.prod(shape))
        inside = (ids >= start) & (ids < start + size)
        predictions = np.flatnonzero(inside.any(axis=1))
        if not inside[predictions].all():  # a prediction's classes split over several steps
            return None
        same_grid = shape[:2] == source[:2]  # a step that keeps its map's cells: it may have a reach
        found.append(Level(step, step.inputs[0][1], predictions, (ids[predictions] - start).astype(np.int64),
                           (shape[0], shape[1], shape[2]), _reach(step, source) if same_grid else None))
        start += size
    return tuple(found)


def worth_pruning(levels: tuple[Level, ...]) -> bool:
    """Whether the class head is large enough for pruning to pay (PRUNED_ABOVE) and its largest level has a reach."""
    largest = max(levels, key=lambda level: len(level.predictions))
    work = sum(sum(int(np.prod(w.shape)) for w in level.step.layer.weights) * level.grid[0] * level.grid[1]
               for level in levels)
    return largest.reach is not None and work >= PRUNED_ABOVE


def _shape(made_by: dict[int, graph_module.Step], number: int) -> tuple[int, ...]:
    """A value's shape without the batch axis; () where it is not fixed."""
    step = made_by.get(number)
    shape = () if step is None else tuple(step.output_shapes[step.outputs.index(number)][1:])
    return () if None in shape else tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _where_scores_sit(gathering: list[graph_module.Step], makers: list[int], shapes: list[tuple[int, ...]],
                      scores: int) -> np.ndarray | None:
    """(A, C): each score's number, counted through the makers' outputs in turn, found by running the steps that
    gather them on the numbers themselves."""
    import tensorflow as tf

    values, start = {}, 0
    for number, shape in zip(makers, shapes):
        size = int(np.prod(shape))
        values[number] = tf.reshape(tf.range(start, start + size, dtype=tf.int32), (1, *shape))
        start += size
    try:
        for step in gathering:
            step.run(values)
        ids = np.asarray(values[scores])
    except Exception:  # noqa: BLE001 - a layer that will not gather integers: no pruning, the whole head instead
        return None
    if ids.dtype.kind != "i" or ids.ndim != 3 or ids.min() < 0 or ids.max() >= start or \
            not (np.bincount(ids.ravel(), minlength=start) == 1).all():  # each score once
        return None
    return ids[0]


def _reach(step: graph_module.Step, shape: tuple[int, ...], probe: int = 25) -> int | None:
    """How far the step's output at a cell reads its input (h, w, channels), measured on random numbers and
    checked on crops; None where it is no finite reach the map is large enough to show. Measured on a map of at most
    `probe` cells a side first (the same reach, if it is one, at less cost), then on the whole map."""
    small = (min(shape[0], probe), min(shape[1], probe), shape[2])
    reach = _reach_on(step, small)
    return reach if reach is not None or small == tuple(shape) else _reach_on(step, tuple(shape))


def _reach_on(step: graph_module.Step, shape: tuple[int, ...]) -> int | None:
    import tensorflow as tf

    height, width = shape[:2]
    x = tf.constant(np.random.default_rng(0).standard_normal((1, *shape)), tf.float32)
    middle = (height // 2, width // 2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        raw = _run(step, x)
        cell = tf.reduce_sum(tf.cast(raw[0, middle[0], middle[1]], tf.float32))
    footprint = np.abs(tape.gradient(cell, x).numpy()[0]).sum(axis=-1) > 0
    rows, cols = np.nonzero(footprint)
    if not len(rows) or rows.min() == 0 or cols.min() == 0 or rows.max() == height - 1 or cols.max() == width - 1:
        return None  # the footprint reaches the map's edge: its true reach is not seen
    reach = int(max(np.abs(rows - middle[0]).max(), np.abs(cols - middle[1]).max()))
    whole = tf.cast(raw, tf.float32).numpy()[0]
    tolerance = 1e-3 if raw.dtype == tf.float32 else 3e-2  # a crop's convolutions may sum in another order
    for y, x0 in (middle, (0, 0)):
        window = whole[y:y + 2, x0:x0 + 2]
        top, left = max(0, y - reach), max(0, x0 - reach)
        crop = tf.cast(_run(step, x[:, top:y + 2 + reach, left:x0 + 2 + reach]), tf.float32).numpy()[0]
        seen = crop[y - top:y - top + 2, x0 - left:x0 - left + 2]
        if seen.shape != window.shape or np.abs(seen - window).max() > tolerance * max(np.abs(window).max(), 1e-6):
            return None
    return reach


def _run(step: graph_module.Step, x: Any) -> Any:
    """The step's output on x, its one input."""
    values = {step.inputs[0][1]: x}
    step.run(values)
    return values[step.outputs[0]]


def pruned(head: tuple[graph_module.Step, ...], levels: tuple[Level, ...], value: int, skips: tuple[int, ...],
           spec: Any) -> Explain:
    """(looked, row image, row class, weights) -> (targets (R,), maps (R, h, w)): each row's class head on the crops
    of the levels its predictions are on, then one backward pass of the pyramid batched over the image's rows."""
    import tensorflow as tf

    sources = tuple(level.source for level in levels)
    to_levels = graph_module.needed(head, set(sources))

    def run_pyramid(activations: Any, skip_values: tuple[Any, ...]) -> tuple[Any, ...]:
        values = {value: activations, **dict(zip(skips, skip_values))}
        for step in to_levels:
            step.run(values)
        return tuple(values[n] for n in sources)

    pyramid = tf.function(lambda a, s: tuple(tf.cast(m, tf.float32) for m in run_pyramid(a, s)),
                          reduce_retracing=True, autograph=False)

    @tf.function(reduce_retracing=True, autograph=False)
    def to_cut(activations: Any, skip_values: tuple[Any, ...], flowing: tuple[Any, ...]) -> Any:
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(activations)
            maps = run_pyramid(activations, skip_values)
        flowing = tuple(tf.cast(f, m.dtype) for f, m in zip(flowing, maps))

        def one(row: tuple[Any, ...]) -> Any:  # what flows back into each level's map for one row
            return tape.gradient(maps, activations, output_gradients=[f[None] for f in row])[0]

        return tf.vectorized_map(one, flowing, fallback_to_while_loop=False)

    scored = [_scored(level) for level in levels]

    @tf.function(reduce_retracing=True, autograph=False)
    def compute(activations: Any, gradients: Any, classes: Any) -> Any:
        rows = tf.repeat(activations, tf.shape(classes)[0], axis=0)
        return spec.compute(MethodInputs(rows, gradients, classes=classes))

    def run(looked: Any, images: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        activations, skip_values = looked.features
        targets, maps = [], []
        for rows in np.split(np.arange(len(images)), np.flatnonzero(np.diff(images)) + 1):
            image = int(images[rows[0]])
            own = tf.cast(activations[image:image + 1], tf.float32)
            skipped = tuple(tf.cast(s[image:image + 1], tf.float32) for s in skip_values)
            level_maps = [m.numpy() for m in pyramid(own, skipped)]
            flowing = [np.zeros((len(rows), *m.shape[1:]), np.float32) for m in level_maps]
            target = np.zeros(len(rows), np.float32)
            for k, row in enumerate(rows):
                for m, level in enumerate(levels):
                    part = _part(level, weights[row], int(classes[row]))
                    if part is None:
                        continue
                    window, elements, w = part
                    t, g = scored[m](tf.constant(level_maps[m][(slice(None), *window)], tf.float32),
                                     tf.constant(elements), tf.constant(w))
                    target[k] += float(t)
                    flowing[m][(k, *window)] += g.numpy()[0]
            gradients = to_cut(own, skipped, tuple(tf.constant(f) for f in flowing))
            targets.append(target)
            maps.append(compute(own, gradients, tf.constant(classes[rows], tf.int32)).numpy())
        return np.concatenate(targets), np.concatenate(maps)

    return run


def _part(level: Level, weights: np.ndarray, cls: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """A row's share of a level: the window of the level's map its head runs on, where its scores sit in that
    window's output, and their weights (None: none of its predictions are on the level)."""
    w = weights[level.predictions]
    on = np.flatnonzero(w)
    if not len(on):
        return None
    height, width, channels = level.grid
    elements = level.elements[on, cls]
    cells, channel = np.divmod(elements, channels)
    ys, xs = np.divmod(cells, width)
    reach = level.reach
    if reach is None:
        top, bottom, left, right = 0, height, 0, width
    else:
        top, bottom = max(0, int(ys.min()) - reach), min(height, int(ys.max()) + reach + 1)
        left, right = max(0, int(xs.min()) - reach), min(width, int(xs.max()) + reach + 1)
    local = ((ys - top) * (right - left) + (xs - left)) * channels + channel
    return (slice(top, bottom), slice(left, right)), local.astype(np.int32), w[on].astype(np.float32)


def _scored(level: Level) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """(crop of the level's map, where the row's scores sit, their weights) -> the row's target on the level, and
    its gradient at the crop."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def scored(crop: Any, elements: Any, weights: Any) -> tuple[Any, Any]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(crop)
            scores = tf.reshape(tf.cast(_run(level.step, crop), tf.float32), [-1])
            target = tf.reduce_sum(weights * tf.gather(scores, elements))
        return target, tf.cast(tape.gradient(target, crop), tf.float32)

    return scored
