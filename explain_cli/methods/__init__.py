"""Explanation methods: each a function of what a compiled step computed, returning maps.

Every method is one entry of `registry.REGISTRY` (its function, what it needs, the tasks it serves); the names here
are read from it. A method at a layer is a `Method`: a function of `MethodInputs` (TensorFlow tensors, one row per
explained (image, class) pair) returning maps (rows, h, w), plus what it needs computed. It runs inside the compiled
explain step, after the one feature pass and the one head gradient that every method of the same image shares.
"""

from __future__ import annotations

from explain_cli.methods.base import Method, MethodInputs
from explain_cli.methods.registry import CLASSIFY, DETECT, FORWARD, LAYER, PIXELS, functions, names

METHODS: dict[str, Method] = functions(LAYER)  # at a layer: the class-activation family, Score-CAM, attention
PIXEL_METHODS = functions(PIXELS)  # gradients at the input's pixels
PERTURBATION_METHODS = functions(FORWARD, CLASSIFY)  # forward passes alone: RISE and occlusion
DETECTION_METHODS = names(task=DETECT)  # what explains an object detector's boxes

__all__ = ["DETECTION_METHODS", "METHODS", "Method", "MethodInputs", "PERTURBATION_METHODS", "PIXEL_METHODS"]
