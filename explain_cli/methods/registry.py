"""Every method explain has, in one table: its name, its function, what it needs computed, which tasks it serves and
whether `--precision auto` keeps it in fp32. Everything else reads its lists from here: the command line's choices and
help, the "what can run on this model" errors, evaluate's layerless set, the detector's methods.

Adding a method is one function (in the module of its kind) and one entry below, plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from explain_cli.methods import perturbation, saliency
from explain_cli.methods.attention import attention_rollout
from explain_cli.methods.base import Method
from explain_cli.methods.cam import cam, eigencam
from explain_cli.methods.gradcam import gradcam, gradcam_plus_plus, hirescam, layercam, xgradcam
from explain_cli.methods.scorecam import scorecam

# What a method needs computed.
LAYER = "layer"  # a layer's activations, and the head's gradient or forward passes of masked inputs (methods.base)
PIXELS = "pixels"  # gradients with respect to the input's pixels (methods.saliency)
FORWARD = "forward"  # forward passes of perturbed inputs alone: any model that runs (methods.perturbation)
NOTHING = "nothing"  # the random control

# The tasks a method serves.
CLASSIFY, SEGMENT, DETECT = "classify", "segment", "detect"  # classify: classes, labels, binary heads and values
EVERY = frozenset({CLASSIFY, SEGMENT, DETECT})
CLASSES_AND_REGIONS = frozenset({CLASSIFY, SEGMENT})
ELEMENT_WISE = "its element-wise maps"  # HiResCAM's and LayerCAM's g ⊙ A sums cancel: r = 0.946 and 0.983 in bf16
TO_THE_PIXELS = "gradients down to the pixels"


@dataclass(frozen=True)
class Entry:
    function: Any  # a Method (LAYER), a function of PixelInputs (PIXELS) or of PerturbationInputs (FORWARD); None
    needs: str
    tasks: frozenset[str]
    fp32_under_auto: str = ""  # why `auto` keeps fp32 for it (measured), where it does


REGISTRY: dict[str, Entry] = {
    "gradcam": Entry(Method(gradcam), LAYER, EVERY),
    "gradcam++": Entry(Method(gradcam_plus_plus), LAYER, EVERY),
    "xgradcam": Entry(Method(xgradcam), LAYER, EVERY),
    "hirescam": Entry(Method(hirescam), LAYER, EVERY, ELEMENT_WISE),
    "layercam": Entry(Method(layercam), LAYER, EVERY, ELEMENT_WISE),
    "cam": Entry(Method(cam, gradients=False, dense_head=True), LAYER, CLASSES_AND_REGIONS),
    "eigencam": Entry(Method(eigencam, gradients=False), LAYER, EVERY),
    "scorecam": Entry(Method(scorecam, gradients=False, forward=True), LAYER, CLASSES_AND_REGIONS),
    "attention-rollout": Entry(Method(attention_rollout, gradients=False, attention=True), LAYER, CLASSES_AND_REGIONS),
    "vanilla": Entry(saliency.vanilla, PIXELS, CLASSES_AND_REGIONS, TO_THE_PIXELS),
    "smoothgrad": Entry(saliency.smoothgrad, PIXELS, CLASSES_AND_REGIONS, TO_THE_PIXELS),
    "integrated-gradients": Entry(saliency.integrated_gradients, PIXELS, CLASSES_AND_REGIONS, TO_THE_PIXELS),
    "guided-backprop": Entry(saliency.guided_backprop, PIXELS, CLASSES_AND_REGIONS, TO_THE_PIXELS),
    "guided-gradcam": Entry(saliency.guided_gradcam, PIXELS, CLASSES_AND_REGIONS, TO_THE_PIXELS),
    "rise": Entry(perturbation.rise, FORWARD, frozenset({CLASSIFY})),
    "occlusion": Entry(perturbation.occlusion, FORWARD, frozenset({CLASSIFY})),
    "drise": Entry(perturbation.drise, FORWARD, frozenset({DETECT})),
    "random": Entry(None, NOTHING, EVERY),
}


def names(needs: str | None = None, task: str | None = None) -> tuple[str, ...]:
    """The methods that need `needs` and serve `task` (None: any), in the registry's order."""
    return tuple(name for name, entry in REGISTRY.items()
                 if (needs is None or entry.needs == needs) and (task is None or task in entry.tasks))


def functions(needs: str, task: str | None = None) -> dict[str, Any]:
    """name → function of the methods that need `needs` (and serve `task`)."""
    return {name: REGISTRY[name].function for name in names(needs, task)}


LAYERLESS = tuple(name for name, entry in REGISTRY.items() if entry.needs in (FORWARD, NOTHING))
FP32_UNDER_AUTO = {name: entry.fp32_under_auto for name, entry in REGISTRY.items() if entry.fp32_under_auto}
