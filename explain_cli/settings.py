"""What an Explainer is made from and what evaluate measures, as plain values, and their checks: the library's and
the command line's settings, and what a Ray worker rebuilds an Explainer from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from explain_cli.errors import BadArgument, between, choose, whole
from explain_cli.evaluation.evaluate import RANDOM as RANDOM
from explain_cli.methods import METHODS
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS
from explain_cli.evaluation.plan import METHOD_NAMES, EvaluationPlan, check_methods

__all__ = ["DetectorSettings", "EvaluationPlan", "METHOD_NAMES", "RANDOM", "Settings", "check", "check_methods"]


@dataclass(frozen=True)
class Settings:
    """What an Explainer is made from, as plain values: a Ray worker makes the same Explainer from them."""

    model: str  # a built-in name or a model file ("" for a keras.Model given in memory)
    layer: str | None = None
    method: str = "gradcam"
    precision: str = "auto"
    preprocess: str | Callable[[Any], Any] | None = None  # a named mode (models.PREPROCESS_MODES) or a function
    labels: str | tuple[str, ...] | None = None  # a labels file, or the names themselves
    weights: str = "imagenet"
    imports: tuple[str, ...] = ()
    unsafe: bool = False
    score: str = "logit"
    counterfactual: bool = False
    max_masks: int = 64
    samples: int = 25
    noise: float = 0.15
    steps: int = 64
    seed: int = 0
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision_for: tuple[str, ...] = ()  # other methods "auto" must suit: evaluate's, classviz
    output: str | None = None  # which output, of a model with several
    multi_label: bool = False  # logits read as several labels per image (sigmoids are, anyway)
    output_index: int | None = None  # one element of a vector output, read as a value
    threshold: float = 0.5  # several labels per image: a label is predicted, and explained, at this probability
    min_area: float = 0.01  # a segmentation: a class is explained where it covers this share of the image
    masks: int = 4000  # rise: random masks
    cells: int = 7  # rise: each mask's grid is cells × cells
    keep: float = 0.5  # rise: the probability a cell is kept
    window: int | None = None  # occlusion: the patch's side in input pixels (default: a seventh of the shorter side)
    stride: int | None = None  # occlusion: its step (default: half the window)
    input_size: tuple[int, ...] | None = None  # a runtime's model file: (height, width), where the file leaves it free;
    # (depth, height, width) for a model of volumes or clips
    layout: str | None = None  # a runtime's model file: "nhwc" or "nchw", where the file does not say
    outputs_are: str | None = None  # a runtime's model file: "logits" or "probabilities", where the file does not say
    runtime: str = "auto"  # where forward-only passes run: "auto", "tensorflow", "openvino" or "onnxruntime"
    arrays: str = "auto"  # how the library reads arrays (inputs.ARRAY_READINGS)
    resize: str = "stretch"  # how pictures are fitted to the input: "stretch" or "letterbox"
    input_name: str | None = None  # a model of several inputs: the one explained (default: its first picture)
    display_channels: tuple[int, ...] | None = None  # a picture of N channels: the 3 (or 1) its maps are drawn on
    clip_length: int | None = None  # a model of clips: the frames of each clip cut from a video (default: its depth)
    clip_stride: int | None = None  # and a clip starting every so many frames (default: the clip's length)
    calibration: str | tuple[str, ...] | None = None  # --precision int8: a folder or the images to calibrate on
    # (default: a seeded sample of the run's own, from the command line; else the first batch)


@dataclass(frozen=True)
class Method:
    """A method with its own settings, for an Explainer's or a Detector's `method=` (a name alone is the shorthand).
    Each setting left at its default here takes the entry's own (RISE's 4000 masks of 7 × 7 cells, D-RISE's 1000 of
    16 × 16)."""

    name: str = "gradcam"
    score: str = "logit"  # gradient methods: the logit or the probability
    counterfactual: bool = False
    max_masks: int = 64  # scorecam
    samples: int = 25  # smoothgrad
    noise: float = 0.15  # smoothgrad
    steps: int = 64  # integrated gradients
    seed: int = 0
    masks: int | None = None  # rise, drise
    cells: int | None = None  # rise, drise
    keep: float | None = None  # rise, drise
    window: int | None = None  # occlusion
    stride: int | None = None  # occlusion


@dataclass(frozen=True)
class Reading:
    """How a model's outputs are read, for `reading=`: which output, as one label or several per image, a value, a
    runtime file's layout; a segmentation's smallest class; a detector's outputs and which of its predictions are
    detections. Each setting left at its default takes the entry's own."""

    output: str | None = None
    multi_label: bool = False
    output_index: int | None = None
    threshold: float = 0.5
    min_area: float = 0.01
    layout: str | None = None
    outputs_are: str | None = None
    boxes_output: str | None = None
    scores_output: str | None = None
    box_format: str | None = None
    objectness_output: str | None = None
    min_score: float = 0.3
    iou: float | None = None
    max_boxes: int = 20


@dataclass(frozen=True)
class Running:
    """Where and how an entry runs, for `running=`: its precision, the runtime of its forward-only passes, batches and
    the pixel limit of a decoded image, and other methods "auto" precision must suit."""

    precision: str = "auto"
    runtime: str = "auto"
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision_for: tuple[str, ...] = ()
    calibration: str | tuple[str, ...] | None = None


def grouped(entry: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """An entry's keyword arguments with `method` (a Method), `reading` and `running` spread into the plain ones they
    group. BadArgument for a setting given both ways, or one the entry does not take."""
    import dataclasses
    import inspect

    parameters = inspect.signature(entry).parameters
    flat = {name: value for name, value in arguments.items()
            if name not in ("self", "model", "reading", "running", "__class__")}
    groups: list[tuple[Any, dict[str, str]]] = [(arguments.get("reading"), {}), (arguments.get("running"), {})]
    if isinstance(flat.get("method"), Method):
        groups.append((flat.pop("method"), {"name": "method"}))
        flat["method"] = parameters["method"].default
    kinds: tuple[type[Reading] | type[Running] | type[Method], ...] = (Reading, Running, Method)
    for (group, renamed), kind in zip(groups, kinds):
        if group is None:
            continue
        if not isinstance(group, kind):
            raise BadArgument(None, f"{kind.__name__.lower()} is a {kind.__name__}, not {group!r}")
        for part in dataclasses.fields(kind):
            value, name = getattr(group, part.name), renamed.get(part.name, part.name)
            if value == part.default and name != "method":
                continue  # left to the entry's own default
            if name not in parameters:
                raise BadArgument(None, f"{type(group).__name__}({part.name}=...) is not an option for "
                                  f"{entry.__name__}")
            if flat[name] != parameters[name].default and flat[name] != value:
                raise BadArgument(None, f"{name} is given twice: as {name}={flat[name]!r} and in "
                                  f"{type(group).__name__}({part.name}={value!r})")
            flat[name] = value
    if not isinstance(flat.get("method"), (str, type(None))):
        raise BadArgument("--method", f"method is a name or a Method, not {flat.get('method')!r}")
    return flat


@dataclass(frozen=True)
class DetectorSettings:
    """What a Detector is made from, as plain values (its keyword arguments): the command line's, and what a Ray worker
    rebuilds it from."""

    model: str
    layer: str | None = None
    method: str | None = None  # gradcam at a layer, or drise for a model file (detector.default_method)
    precision: str = "auto"
    preprocess: str | None = None
    labels: str | tuple[str, ...] | None = None
    imports: tuple[str, ...] = ()
    unsafe: bool = False
    layout: str | None = None  # a model file: "nhwc" or "nchw", where the file does not say
    output_layout: str | None = None  # a model file: how its outputs read (detection_files.LAYOUTS)
    resize: str | None = None  # "stretch" or "letterbox" (default: what the file says, else stretch)
    boxes_output: str | None = None
    scores_output: str | None = None
    box_format: str | None = None
    objectness_output: str | None = None
    min_score: float = 0.3
    iou: float | None = None
    max_boxes: int = 20
    masks: int = 1000  # drise: random masks
    cells: int = 16  # drise: each mask's grid is cells × cells
    keep: float = 0.5
    seed: int = 0
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    input_size: tuple[int, int] | None = None
    runtime: str = "auto"
    precision_for: tuple[str, ...] = ()


def check(settings: Settings) -> None:
    """BadArgument, naming the argument and what it may be, for settings no model can be explained with: every value
    checked where it enters, before any model is loaded."""
    from explain_cli.inputs.sources import ARRAY_READINGS
    from explain_cli.model.loading import check_preprocess
    from explain_cli.model.runtime import RUNTIMES
    from explain_cli.steps.precision import CHOICES

    s = settings
    if not isinstance(s.method, str):
        raise BadArgument("--method", f"method is a name, not {s.method!r}")
    check_methods([s.method])
    if not all(isinstance(m, str) for m in s.precision_for):  # other methods "auto" suits: classviz is one too
        raise BadArgument(None, f"precision_for holds method names, not {s.precision_for!r}")
    choose("--score", "score", s.score, ("logit", "probability"))
    choose("--precision", "precision", s.precision, CHOICES)
    choose("--runtime", "runtime", s.runtime, RUNTIMES)
    choose(None, "arrays", s.arrays, ARRAY_READINGS)
    choose("--layout", "layout", s.layout, ("nhwc", "nchw", None))
    choose("--outputs", "outputs_are", s.outputs_are, ("logits", "probabilities", None))
    choose("--resize", "resize", s.resize, ("stretch", "letterbox"))
    check_preprocess(s.preprocess)
    if s.display_channels is not None and (not isinstance(s.display_channels, (tuple, list)) or len(
            s.display_channels) not in (1, 3) or not all(isinstance(c, int) and c >= 0 for c in s.display_channels)):
        raise BadArgument("--display-channels", f"three channel numbers from 0 (red, green, blue) or one (grey), not "
                          f"{s.display_channels!r}")
    value: Any
    for option, name, value in (("--layer", "layer", s.layer), ("--output", "output", s.output),
                                 ("--input", "input_name", s.input_name)):
        if value is not None and not isinstance(value, str):
            raise BadArgument(option, f"{name} is a name, not {value!r}")
    for option, name, value, least in (
            ("--batch-size", "batch_size", s.batch_size, 1), ("--max-pixels", "max_pixels", s.max_pixels, 1),
            ("--max-masks", "max_masks", s.max_masks, 1), ("--samples", "samples", s.samples, 1),
            ("--steps", "steps", s.steps, 1), ("--seed", "seed", s.seed, 0), ("--masks", "masks", s.masks, 1),
            ("--cells", "cells", s.cells, 1)):
        whole(option, name, value, least)
    for option, name, value, least in (("--window", "window", s.window, 1), ("--stride", "stride", s.stride, 1),
                                       ("--output-index", "output_index", s.output_index, 0)):
        if value is not None:  # None: its default
            whole(option, name, value, least)
    for option, name, value, low, high in (("--noise", "noise", s.noise, 0.0, None),
                                           ("--threshold", "threshold", s.threshold, 0.0, 1.0),
                                           ("--min-area", "min_area", s.min_area, 0.0, 1.0),
                                           ("--keep", "keep", s.keep, 0.0, 1.0)):
        between(option, name, value, low, high)
    if s.keep == 0:
        raise BadArgument("--keep", "keep is above 0 (the share of RISE's cells each mask keeps), not 0")
    if s.input_size is not None and not (isinstance(s.input_size, (tuple, list)) and len(s.input_size) in (2, 3)):
        raise BadArgument("--input-size", f"input_size is (height, width), or (depth, height, width) for volumes and "
                          f"clips, not {s.input_size!r}")
    for side in s.input_size or ():
        whole("--input-size", "input_size", side, 1)
    for option, name, value in (("--clip-length", "clip_length", s.clip_length), ("--clip-stride", "clip_stride",
                                                                                   s.clip_stride)):
        if value is not None:
            whole(option, name, value, 1)
    if s.calibration is not None and not (isinstance(s.calibration, str) or (
            isinstance(s.calibration, tuple) and s.calibration and all(isinstance(c, str) for c in s.calibration))):
        raise BadArgument("--calibration", f"calibration is a folder or image paths, not {s.calibration!r}")
    if s.calibration is not None and s.precision != "int8":
        raise BadArgument("--calibration", "calibrates --precision int8, and the precision is " + s.precision)
    if s.counterfactual and not (s.method in METHODS and METHODS[s.method].gradients):
        raise BadArgument("--counterfactual", f"{s.method} uses no gradients to negate")


def check_detector(min_score: Any, iou: Any, keep: Any, max_boxes: Any, masks: Any, cells: Any, seed: Any, batch_size: Any,
           max_pixels: Any, precision: Any, preprocess: Any, runtime: Any) -> None:
    """BadArgument for a Detector's argument that cannot be used, naming it and what it may be."""
    from explain_cli.errors import between, choose, whole
    from explain_cli.model.loading import check_preprocess
    from explain_cli.model.runtime import RUNTIMES
    from explain_cli.steps.precision import CHOICES

    for option, name, value in (("--min-score", "min_score", min_score), ("--iou", "iou", iou), ("--keep", "keep", keep)):
        if value is not None:
            between(option, name, value, 0.0, 1.0)
    for option, name, value, least in (("--max-boxes", "max_boxes", max_boxes, 1), ("--masks", "masks", masks, 1),
                                       ("--cells", "cells", cells, 1), ("--seed", "seed", seed, 0),
                                       ("--batch-size", "batch_size", batch_size, 1),
                                       ("--max-pixels", "max_pixels", max_pixels, 1)):
        whole(option, name, value, least)
    choose("--precision", "precision", precision, CHOICES)
    choose("--runtime", "runtime", runtime, RUNTIMES)
    check_preprocess(preprocess)
