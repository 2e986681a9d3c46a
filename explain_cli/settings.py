"""What an Explainer is made from and what evaluate measures, as plain values, and their checks: the library's and
the command line's settings, and what a Ray worker rebuilds an Explainer from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from explain_cli.errors import BadArgument, between, choose, whole
from explain_cli.evaluation.evaluate import RANDOM as RANDOM
from explain_cli.methods import METHODS
from explain_cli.methods.registry import CLASSIFY, names
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS

METHOD_NAMES = names(task=CLASSIFY)  # what explains a classifier, a labeller or a value head


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
    input_size: tuple[int, int] | None = None  # a runtime's model file: (height, width), where the file leaves it free
    layout: str | None = None  # a runtime's model file: "nhwc" or "nchw", where the file does not say
    outputs_are: str | None = None  # a runtime's model file: "logits" or "probabilities", where the file does not say
    runtime: str = "auto"  # where forward-only passes run: "auto", "tensorflow", "openvino" or "onnxruntime"
    arrays: str = "auto"  # how the library reads arrays (inputs.ARRAY_READINGS)


@dataclass(frozen=True)
class EvaluationPlan:
    """What evaluate measures: the methods, N deletion / insertion steps, insertion's blur, the pointing game's
    tolerance, the random control's seed, and the sanity cascade's stages (0: none)."""

    methods: tuple[str, ...]
    steps: int = 32
    blur_sigma: float = 5.0
    tolerance: float = 15.0
    seed: int = 0
    sanity_stages: int = 0


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
    check_preprocess(s.preprocess)
    for option, name, value in (("--layer", "layer", s.layer), ("--output", "output", s.output)):
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
    if s.input_size is not None and not (isinstance(s.input_size, (tuple, list)) and len(s.input_size) == 2):
        raise BadArgument("--input-size", f"input_size is (height, width), not {s.input_size!r}")
    for side in s.input_size or ():
        whole("--input-size", "input_size", side, 1)
    if s.counterfactual and not (s.method in METHODS and METHODS[s.method].gradients):
        raise BadArgument("--counterfactual", f"{s.method} uses no gradients to negate")


def check_methods(methods: Iterable[str]) -> None:
    for method in methods:
        if method == "drise":
            raise BadArgument("--method", "drise explains an object detector's boxes, and this model is no detector")
        if method not in METHOD_NAMES:
            raise BadArgument("--method", f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
