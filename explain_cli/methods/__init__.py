"""Explanation methods at a layer's resolution: each turns what the explain step computed into maps.

A method is a `Method`: a function of `MethodInputs` (TensorFlow tensors, one row per explained
(image, class) pair) returning maps (rows, h, w), plus what it needs computed. It runs inside the
compiled explain step, after the one feature pass and the one head gradient that every method of
the same image shares. Adding a method is one function and one line in METHODS.
"""

from __future__ import annotations

from explain_cli.methods.attention import attention_rollout
from explain_cli.methods.base import Method, MethodInputs
from explain_cli.methods.cam import cam, eigencam
from explain_cli.methods.gradcam import gradcam, gradcam_plus_plus, hirescam, layercam, xgradcam
from explain_cli.methods.scorecam import scorecam

METHODS: dict[str, Method] = {
    "gradcam": Method(gradcam),
    "gradcam++": Method(gradcam_plus_plus),
    "xgradcam": Method(xgradcam),
    "hirescam": Method(hirescam),
    "layercam": Method(layercam),
    "cam": Method(cam, gradients=False, dense_head=True),
    "eigencam": Method(eigencam, gradients=False),
    "scorecam": Method(scorecam, gradients=False, forward=True),
    "attention-rollout": Method(attention_rollout, gradients=False, attention=True),
}

# What explains an object detector's boxes (detect.py): the gradient methods and EigenCAM at a layer, D-RISE's masks,
# and the random control.
DETECTION_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "drise", "random")

__all__ = ["DETECTION_METHODS", "METHODS", "Method", "MethodInputs"]
