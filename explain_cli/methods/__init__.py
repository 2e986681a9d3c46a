"""Explanation methods: each turns a layer's activations and the class score's gradient into a map.

A method is a function (activations A, gradients ∂y_c/∂A) -> map, on TensorFlow tensors shaped
(n, h, w, k) -> (n, h, w), run inside the compiled explain step. Adding one is a function and a line
in METHODS.
"""

from __future__ import annotations

from typing import Any, Callable

from explain_cli.methods.gradcam import gradcam

Method = Callable[[Any, Any], Any]

METHODS: dict[str, Method] = {
    "gradcam": gradcam,
}
