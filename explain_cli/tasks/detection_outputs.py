"""Object detectors: how their outputs read, the one output explain joins them into, and the tensor maths on them
(decoding, probabilities, D-RISE's similarity, evaluate's matched score); tasks/detection_steps.py compiles the steps.

A detector's model outputs, before non-maximum suppression, a box and class scores for each of A predictions (a
RetinaNet's anchors, a DETR's queries, a grid's cells). explain reads two outputs, boxes (b, A, 4) and class scores
(b, A, C), and joins them into one: (b, A, 4 + C), the boxes as the model gives them and the scores before their
sigmoid or softmax. The joined model is a model like any other to the cut (model/cut.py): its feature part runs once per
image, and each explained box's target runs under the tape at the cut.

A detection's gradient target is Σ_a w_a · z_a,c: over the pre-NMS predictions a whose box overlaps the detection by
IoU ≥ 0.5, its IoU w_a (held fixed) times its pre-activation score for the detection's class c.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from explain_cli.tasks import boxes as box_module
from explain_cli.model import graph as graph_module
from explain_cli.errors import BadArgument, ExplainError
from explain_cli.model.twins import activation_name, is_activation_layer, with_activation

UNDERSTOOD = ("explain detect reads keras-hub's RetinaNet and D-FINE detectors, or a model with two outputs before "
              "non-maximum suppression: boxes (batch, A, 4) and class scores (batch, A, classes)")


@dataclass(frozen=True)
class Format:
    """How a detector's two outputs read."""

    boxes_output: str
    scores_output: str
    box_format: str  # one of boxes.FORMATS; "anchor_deltas" for a keras-hub RetinaNet
    activation: str  # what turns a score into a probability: "sigmoid" (each class its own) or "softmax"
    classes: int
    predictions: int  # A
    iou: float = 0.5  # non-maximum suppression's threshold
    per_class: bool = True  # suppression among boxes of one class (False: of any class, as keras-hub's layer does)
    anchors: Any = None  # (A, 4) a RetinaNet's anchors, in `anchor_format`, for the input's size
    objectness_output: str | None = None  # (b, A, 1): how likely each prediction is an object at all (a YOLO's)
    objectness_activation: str = "sigmoid"  # "sigmoid": the output is probabilities; "linear": logits
    anchor_format: str = "yxyx"
    own_format: str = "yxyx"  # the format a RetinaNet decodes its deltas to


def read(model: Any, graph: graph_module.Graph, height: int, width: int, boxes_output: str | None = None,
         scores_output: str | None = None, box_format: str | None = None, iou: float | None = None,
         objectness_output: str | None = None) -> Format:
    """The detector format of a model; ExplainError (naming the outputs) where it is no detector explain reads."""
    if type(model).__name__ == "RetinaNetObjectDetector":
        return _retinanet(model, height, width, iou)
    if type(model).__name__ == "DFineObjectDetector":  # its queries' final boxes (cx, cy, w, h in fractions) and logits
        found = outputs_of(graph, "pred_boxes", "logits", "rel_center_xywh", iou)
        decoder = model.prediction_decoder
        return dataclasses.replace(found, activation="sigmoid" if decoder.from_logits else found.activation,
                                   iou=iou if iou is not None else float(decoder.iou_threshold), per_class=False)
    if "ObjectDetector" in type(model).__name__:
        raise ExplainError(f"{type(model).__name__} is not read yet: {UNDERSTOOD}")
    return outputs_of(graph, boxes_output, scores_output, box_format, iou, objectness_output)


def outputs_of(graph: graph_module.Graph, boxes_output: str | None, scores_output: str | None,
               box_format: str | None, iou: float | None, objectness_output: str | None = None) -> Format:
    """The format of a model's two outputs, boxes (b, A, 4) and scores (b, A, C): as named, or found by their shapes;
    and its objectness (b, A, 1), where named."""
    shapes = {name: _shape_of(graph, number) for name, number in graph.outputs}
    described = ", ".join(f"{name} {(None, *shape)}" for name, shape in shapes.items()) or "none"
    for option, name in (("--boxes-output", boxes_output), ("--scores-output", scores_output),
                         ("--objectness-output", objectness_output)):
        if name is not None and name not in shapes:
            raise BadArgument(option, f"unknown output {name!r}; the model's outputs: {described}")
    triples = {name: shape for name, shape in shapes.items() if len(shape) == 2 and name != objectness_output}
    boxes_name = boxes_output or _only([n for n, s in triples.items() if s[-1] == 4 and n != scores_output],
                                       "--boxes-output", described, "(batch, A, 4)")
    others = [n for n, shape in triples.items() if n != boxes_name and shape[0] == shapes[boxes_name][0]]
    wide = [n for n in others if triples[n][-1] != 4]  # class scores, unless the classes are four
    scores_name = scores_output or _only(wide or others, "--scores-output", described, "(batch, A, classes)")
    box_shape, score_shape = shapes[boxes_name], shapes[scores_name]
    if len(box_shape) != 2 or box_shape[-1] != 4 or len(score_shape) != 2 or box_shape[0] != score_shape[0]:
        raise ExplainError(f"{UNDERSTOOD}; this model's outputs: {described}")
    chosen = box_format or "xyxy"
    if chosen not in box_module.FORMATS:
        raise BadArgument("--box-format", f"unknown box format {chosen!r}; choose from {', '.join(box_module.FORMATS)}")
    activation = scores_activation(graph, dict(graph.outputs)[scores_name])
    objectness = "sigmoid"
    if objectness_output is not None:
        if shapes[objectness_output] != (box_shape[0], 1):
            raise BadArgument("--objectness-output", f"{objectness_output} is {(None, *shapes[objectness_output])}, "
                              f"not (None, {box_shape[0]}, 1)")
        objectness = scores_activation(graph, dict(graph.outputs)[objectness_output])
    return Format(boxes_name, scores_name, chosen, "softmax" if activation == "softmax" else "sigmoid",
                  int(score_shape[-1] or 0), int(box_shape[0] or 0), iou if iou is not None else 0.5,
                  objectness_output=objectness_output, objectness_activation=objectness)


def _only(names: list[str], option: str, described: str, wanted: str) -> str:
    if len(names) == 1:
        return names[0]
    if not names:
        raise ExplainError(f"{UNDERSTOOD}; this model's outputs: {described}")
    raise BadArgument(option, f"several outputs could be {wanted}: name one ({described})")


def _shape_of(graph: graph_module.Graph, number: int) -> tuple[int | None, ...]:
    step = next(s for s in graph.steps if number in s.outputs)
    return tuple(step.output_shapes[step.outputs.index(number)][1:])


def _retinanet(model: Any, height: int, width: int, iou: float | None) -> Format:
    """A keras-hub RetinaNet: anchor deltas ("center_xywh" against its anchor generator's boxes) and class logits;
    its own decoder's IoU threshold and class-agnostic suppression."""
    generator = model.anchor_generator
    anchors = np.concatenate([np.asarray(a) for a in generator(np.zeros((1, height, width, 3), np.float32)).values()])
    decoder = model.prediction_decoder
    activation = getattr(model.activation, "__name__", None) if model.activation is not None else None
    return Format("bbox_regression", "cls_logits", "anchor_deltas", "softmax" if activation == "softmax" else "sigmoid",
                  int(model.num_classes), len(anchors), iou if iou is not None else float(decoder.iou_threshold),
                  per_class=False, anchors=anchors.astype(np.float32), anchor_format=generator.bounding_box_format,
                  own_format=model.bounding_box_format)


# --- the joined model ------------------------------------------------------------------------------------------------


class _Join:
    """The last step of the joined model: (b, A, 4) boxes, (b, A, C) scores and perhaps (b, A, 1) objectness ->
    (b, A, 4 + C [+ 1]) float32."""

    name = "explain_detections"

    def __call__(self, *parts: Any) -> Any:
        import tensorflow as tf

        return tf.concat([tf.cast(part, tf.float32) for part in parts], axis=-1)


class _Parts:
    """The join step's call arguments: the values numbered 0, 1 (and 2), in order."""

    keras_tensors: tuple = ()

    def fill_in(self, values: dict) -> tuple[tuple, dict]:
        return tuple(values[key] for key in sorted(values)), {}


def joined(graph: graph_module.Graph, found: Format) -> graph_module.Graph:
    """The graph whose one output is (b, A, 4 + C [+ 1]): the boxes output as the model gives it, the scores output
    before its final sigmoid or softmax, and the objectness output where there is one."""
    outputs = dict(graph.outputs)
    steps, scores = linear_scores(graph, outputs[found.scores_output])
    parts = [outputs[found.boxes_output], scores] + ([outputs[found.objectness_output]] if found.objectness_output
                                                     else [])
    number = max(n for s in graph.steps for n in s.outputs) + 1
    width = 4 + found.classes + bool(found.objectness_output)
    join = graph_module.Step(name=_Join.name, layer=_Join(), arguments=_Parts(), inputs=tuple(enumerate(parts)),
                             outputs=(number,), output_shapes=((None, found.predictions, width),),
                             takes_training=False)
    return dataclasses.replace(graph, steps=(*steps, join), output=number, outputs=(("detections", number),))


def scores_only(graph: graph_module.Graph, found: Format) -> graph_module.Graph:
    """The graph up to the scores output before its sigmoid or softmax (the tape needs only it: a box's weights are
    held fixed)."""
    steps, scores = linear_scores(graph, dict(graph.outputs)[found.scores_output])
    return dataclasses.replace(graph, steps=tuple(steps), output=scores)


# What gathers a detector's class scores into its output without computing on them.
GATHERING = ("Reshape", "Concatenate", "Permute", "Flatten")


def scores_activation(graph: graph_module.Graph, scores: int) -> str:
    """How a detector's scores output became probabilities: "sigmoid", "softmax" or "linear" (logits), read from the
    layers that made its values, back through the reshapes and joins that gather a feature pyramid's levels."""
    steps = [_step_making(graph, n) for n in score_makers(graph, scores)]
    kinds = {_activation_of(step.layer) if step is not None else "linear" for step in steps}
    return kinds.pop() if len(kinds) == 1 else "linear"


def linear_scores(graph: graph_module.Graph, scores: int) -> tuple[list[graph_module.Step], int]:
    """The steps with the scores' final sigmoids or softmaxes left out (a layer's own activation made linear in a twin
    that shares its weights; an activation layer passing its input on), and the scores output's value number."""
    makers = set(score_makers(graph, scores))
    steps = []
    for step in graph.steps:
        if step.outputs[0] in makers and _activation_of(step.layer) in ("sigmoid", "softmax"):
            if is_activation_layer(step.layer) or type(step.layer).__name__ in _ACTIVATION_OPS:
                step = dataclasses.replace(step, layer=_passing, takes_training=False)
            else:
                from keras import activations

                step = with_activation(step, activations.linear)
        steps.append(step)
    return steps, scores


# Keras ops called on a model's tensors (keras.ops.sigmoid, keras.ops.softmax) are steps of their own.
_ACTIVATION_OPS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}


def _activation_of(layer: Any) -> str:
    """What a step's layer ends with: its activation, or the activation op it is."""
    return _ACTIVATION_OPS.get(type(layer).__name__) or activation_name(layer)


def _passing(values: Any, *args: Any, **kwargs: Any) -> Any:
    """An activation layer left out: its input passed on."""
    return values


def score_makers(graph: graph_module.Graph, value: int) -> list[int]:
    """The values that the steps gathering `value` (GATHERING) read: where its numbers are computed."""
    return gathering(graph.steps, value)[1]


def gathering(steps: Sequence[graph_module.Step], value: int) -> tuple[list[graph_module.Step], list[int]]:
    """The steps that gather `value` (GATHERING), in the steps' order, and the values they read (score_makers)."""
    made_by = {n: s for s in steps for n in s.outputs}
    chain, found, seen = set(), [], [value]
    while seen:
        number = seen.pop()
        step = made_by.get(number)
        if step is not None and type(step.layer).__name__ in GATHERING:
            chain.add(id(step))
            seen.extend(n for _, n in step.inputs)
        else:
            found.append(number)
    return [s for s in steps if id(s) in chain], found


def _step_making(graph: graph_module.Graph, number: int) -> graph_module.Step | None:
    """The step that computes the value `number` (None: the input)."""
    return next((s for s in graph.steps if number in s.outputs), None)


# --- on tensors ------------------------------------------------------------------------------------------------------


def decode(found: Format, height: int, width: int) -> Callable[[Any], Any]:
    """(b, A, 4) the boxes output -> (b, A, 4) xyxy boxes in the input's pixels, float32."""
    import tensorflow as tf

    if found.box_format != "anchor_deltas":
        return lambda raw: box_module.to_xyxy(tf.cast(raw, tf.float32), found.box_format, height, width, tf)
    import keras

    anchors = tf.constant(found.anchors)

    def from_deltas(raw: Any) -> Any:  # what keras-hub's RetinaNet.decode_predictions does
        own = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=anchors, boxes_delta=tf.cast(raw, tf.float32), encoded_format="center_xywh",
            anchor_format=found.anchor_format, box_format=found.own_format, image_shape=(height, width, 3))
        return box_module.to_xyxy(own, found.own_format, height, width, tf)

    return from_deltas


def probabilities(found: Format, joined_scores: Any) -> Any:
    """(b, A, C) each prediction's class probabilities from the joined output's scores (its columns after the box's):
    the pre-activation scores made probabilities, times the objectness where there is one (YOLO's confidence)."""
    import tensorflow as tf

    scores = joined_scores[..., :found.classes]
    found_probabilities = tf.nn.softmax(scores, axis=-1) if found.activation == "softmax" else tf.sigmoid(scores)
    if not found.objectness_output:
        return found_probabilities
    objectness = joined_scores[..., found.classes:]
    return found_probabilities * (tf.sigmoid(objectness) if found.objectness_activation == "linear" else objectness)


def pairwise_iou(targets: Any, candidates: Any) -> Any:
    """(T, 4) and (n, A, 4) xyxy -> (n, T, A) IoU, in TensorFlow."""
    import tensorflow as tf

    t = targets[None, :, None, :]
    c = candidates[:, None, :, :]
    inner = tf.nn.relu(tf.minimum(t[..., 2], c[..., 2]) - tf.maximum(t[..., 0], c[..., 0])) * \
        tf.nn.relu(tf.minimum(t[..., 3], c[..., 3]) - tf.maximum(t[..., 1], c[..., 1]))
    area = lambda b: tf.nn.relu(b[..., 2] - b[..., 0]) * tf.nn.relu(b[..., 3] - b[..., 1])  # noqa: E731
    union = area(t) + area(c) - inner
    return tf.math.divide_no_nan(inner, union)


def similarity(found_boxes: Any, found_probabilities: Any, targets: Any, target_probabilities: Any) -> Any:
    """D-RISE's score of each target in each masked image (n, T): max over its predictions a of IoU(target, box_a) ·
    cos(p_target, p_a) · max_c p_a,c, the prediction's confidence: its objectness times its best class's probability
    where the model has objectness, and standing in for it where not (without it, a faint prediction whose few
    percent point the same way would count as a full match)."""
    import tensorflow as tf

    overlap = pairwise_iou(targets, found_boxes)  # (n, T, A)
    unit = tf.math.l2_normalize(found_probabilities, axis=-1)
    cosine = tf.einsum("nac,tc->nta", unit, tf.math.l2_normalize(target_probabilities, axis=-1))
    confidence = tf.reduce_max(found_probabilities, axis=-1)[:, None, :]
    return tf.reduce_max(overlap * cosine * confidence, axis=-1)


def matched_score(found_boxes: Any, found_probabilities: Any, targets: Any, classes: Any) -> Any:
    """evaluate's score of each target in each perturbed image (n, T): the highest probability of the target's class
    among the predictions whose box overlaps the target's by IoU ≥ 0.5 (0 where none does)."""
    import tensorflow as tf

    overlap = pairwise_iou(targets, found_boxes)  # (n, T, A)
    per_class = tf.gather(tf.transpose(found_probabilities, [0, 2, 1]), classes, axis=1)  # (n, T, A)
    return tf.reduce_max(tf.where(overlap >= 0.5, per_class, 0.0), axis=-1)
