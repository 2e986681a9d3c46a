"""What an Explainer is made from and what evaluate measures, as plain values, and their checks: the library's and
the command line's settings, and what a Ray worker rebuilds an Explainer from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from explain_cli.errors import BadArgument
from explain_cli.evaluate import RANDOM as RANDOM
from explain_cli.methods import METHODS
from explain_cli.methods.perturbation import PERTURBATION_METHODS
from explain_cli.methods.saliency import PIXEL_METHODS
from explain_cli.shards import DEFAULT_MAX_PIXELS

METHOD_NAMES = (*METHODS, *PIXEL_METHODS, *PERTURBATION_METHODS, RANDOM)


@dataclass(frozen=True)
class Settings:
    """What an Explainer is made from, as plain values: a Ray worker makes the same Explainer from them."""

    model: str  # a built-in name or a model file ("" for a keras.Model given in memory)
    layer: str | None = None
    method: str = "gradcam"
    precision: str = "auto"
    preprocess: str | None = None
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
    """BadArgument for settings no model can be explained with: an unknown method, score, a counterfactual of a method
    without gradients."""
    check_methods([settings.method])
    if settings.score not in ("logit", "probability"):
        raise BadArgument("--score", f"score is 'logit' or 'probability', not {settings.score!r}")
    if settings.counterfactual and not (settings.method in METHODS and METHODS[settings.method].gradients):
        raise BadArgument("--counterfactual", f"{settings.method} uses no gradients to negate")


def check_methods(methods: Iterable[str]) -> None:
    for method in methods:
        if method == "drise":
            raise BadArgument("--method", "drise explains an object detector's boxes, and this model is no detector")
        if method not in METHOD_NAMES:
            raise BadArgument("--method", f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
