"""Which precision a run computes in: `auto` takes bf16 where the CPU computes it natively (model/precision.py), except
for the methods that do not hold up in bf16 (the method registry's measured list, and class visualisation), which keep
fp32; `fp32`, `bf16` and `int8` (model/quantizing.py: it changes maps, so `auto` never picks it) are taken as asked.
"""

from __future__ import annotations

import os
from typing import Sequence

from explain_cli.errors import ExplainError
from explain_cli.methods.registry import FP32_UNDER_AUTO as _KEPT_BY_METHODS
from explain_cli.methods.registry import TO_THE_PIXELS
from explain_cli.model import precision as hardware

CHOICES = ("auto", "fp32", "bf16", "int8")  # int8: forward-only passes alone, never chosen by auto
# Kept in float32 by `auto`, measured: pixel attributions and class visualisation follow gradients down to the
# pixels; HiResCAM's and LayerCAM's element-wise g ⊙ A sums cancel, so rounding A to bfloat16 moves them
# (r = 0.946 and 0.983 against fp32 on a random-weight VGG16, where every other method is at r ≥ 0.999).
FP32_UNDER_AUTO = {**_KEPT_BY_METHODS, "classviz": TO_THE_PIXELS}


def resolve(choice: str, methods: Sequence[str] = (), flags: set[str] | None = None) -> tuple[str, str]:
    """The precision to use for `methods` and why (for --verbose); ExplainError where bf16 cannot run."""
    if choice == "bf16" and hardware.bf16_support(flags) == "unavailable":
        raise ExplainError(f"--precision bf16: ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')} forbids "
                           "oneDNN the CPU's bfloat16 instructions, so TensorFlow cannot run bfloat16 convolutions; "
                           "unset it, set TF_ENABLE_ONEDNN_OPTS=0, or use --precision fp32")
    if choice != "auto":
        return choice, f"--precision {choice}"
    kept = [m for m in methods if m in FP32_UNDER_AUTO]
    if kept:
        return "fp32", f"auto: {kept[0]} stays in fp32 ({FP32_UNDER_AUTO[kept[0]]} do not hold up in bf16)"
    found = hardware.native_bf16(flags)
    if found:
        return "bf16", f"auto: the CPU computes bfloat16 natively ({', '.join(found)})"
    if hardware.native_bf16(flags, max_isa="DEFAULT"):
        return "fp32", (f"auto: ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')} keeps TensorFlow from the "
                        "CPU's bfloat16 instructions, so bfloat16 would be emulated and slower")
    return "fp32", "auto: no AMX or AVX512-BF16 on this CPU, where bfloat16 would be emulated and slower"


def resuited(asked: str, chosen: str, methods: Sequence[str]) -> str | None:
    """The precision `auto` chooses once `methods` must all be suited, where that is not `chosen` (one of them keeps
    fp32); None where nothing changes (a precision asked for by name, or the same choice). evaluate's one rule: the
    methods it measures together are computed at one precision, from Python as on the command line."""
    if asked != "auto":
        return None
    again = resolve("auto", methods)[0]
    return again if again != chosen else None
