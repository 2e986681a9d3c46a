"""--precision auto|fp32|bf16: where the model computes in bfloat16.

bf16 runs the replayed graph with layers whose dtype policy is mixed_bfloat16 (twins sharing the float32
weights: split.twin; the user's model is untouched). When a model is cut, only the feature part (input → A, where
nearly all the work is) computes in bfloat16: A is taken to float32 and the head runs in float32, so the
gradient ∂y/∂A that every method weighs A with is exact for the A it is given. Logits, gradients and maps are
summed in float32. `auto` chooses bf16 where the CPU has native bfloat16 arithmetic (AMX or AVX512-BF16:
measured here, folded ResNet50's gradcam step 18.0 → 9.6 ms per image) and fp32 elsewhere, where bfloat16 is
emulated and slower than float32. Some methods stay fp32 under `auto` (FP32_UNDER_AUTO, measured).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from explain_cli.methods.saliency import PIXEL_METHODS

CHOICES = ("auto", "fp32", "bf16")
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


# Kept in float32 by `auto`, measured: pixel attributions and class visualisation follow gradients down to the
# pixels; HiResCAM's and LayerCAM's element-wise g ⊙ A sums cancel, so rounding A to bfloat16 moves them
# (r = 0.946 and 0.983 against fp32 on a random-weight VGG16, where every other method is at r ≥ 0.999).
FP32_UNDER_AUTO = {"hirescam": "its element-wise maps", "layercam": "its element-wise maps",
                   "classviz": "gradients down to the pixels",
                   **{method: "gradients down to the pixels" for method in PIXEL_METHODS}}


def resolve(choice: str, methods: Sequence[str] = (), flags: set[str] | None = None) -> tuple[str, str]:
    """The precision to use for `methods` and why (for --verbose)."""
    if choice != "auto":
        return choice, f"--precision {choice}"
    kept = [m for m in methods if m in FP32_UNDER_AUTO]
    if kept:
        return "fp32", f"auto: {kept[0]} stays in fp32 ({FP32_UNDER_AUTO[kept[0]]} do not hold up in bf16)"
    found = sorted((cpu_flags() if flags is None else flags) & set(FAST_BF16_FLAGS))
    if found:
        return "bf16", f"auto: the CPU computes bfloat16 natively ({', '.join(found)})"
    return "fp32", "auto: no AMX or AVX512-BF16 on this CPU, where bfloat16 would be emulated and slower"


def bfloat16(steps: Sequence[Any]) -> list[Any]:
    """The steps with every layer that outputs a feature map (4-D) computing in bfloat16 (mixed_bfloat16: float32
    weights, bfloat16 compute). The classifier after the feature maps stays float32: it is little of the work,
    and so predictions are the same whether they come from a whole forward pass or from the explain step."""
    import keras

    from explain_cli.split import twin

    policy = keras.DTypePolicy("mixed_bfloat16")
    converted = []
    for step in steps:
        if not all(len(shape) == 4 for shape in step.output_shapes) or not isinstance(step.layer, keras.Layer):
            converted.append(step)  # the classifier, and guided backprop's plain functions, stay as they are
            continue
        layer = twin(step.layer)
        object.__setattr__(layer, "_dtype_policy", policy)  # Keras has no public setter; the twin alone changes
        converted.append(dataclasses.replace(step, layer=layer))
    return converted
