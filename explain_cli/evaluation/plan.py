"""What `evaluate` is asked to measure, as a plain value, and the check of the methods it names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from explain_cli.errors import BadArgument
from explain_cli.methods.registry import CLASSIFY, names

METHOD_NAMES = names(task=CLASSIFY)  # what explains a classifier, a labeller, a value head or a segmentation


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


def check_methods(methods: Iterable[str]) -> None:
    for method in methods:
        if method == "drise":
            raise BadArgument("--method", "drise explains an object detector's boxes, and this model is no detector")
        if method not in METHOD_NAMES:
            raise BadArgument("--method", f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
