"""--precision auto|fp32|bf16: where the model computes in bfloat16.

bf16 runs the replayed graph with layers whose dtype policy is mixed_bfloat16 (twins sharing the float32
weights: model/twins.py; the user's model is untouched). When a model is cut, only the feature part (input → A, where
nearly all the work is) computes in bfloat16: A is taken to float32 and the head runs in float32, so the
gradient ∂y/∂A that every method weighs A with is exact for the A it is given; a detector's head (its pyramid and
its class and box heads on every level, half its work or more) is the exception, and computes in bfloat16 too, held
to the same bounds. A layer of layers (a keras-hub pyramid or head) is twinned with its sublayers, which would
otherwise compute in the float32 they were made with. Logits, gradients and maps are summed in float32. `auto`
chooses bf16 where the CPU has native bfloat16 arithmetic (AMX or AVX512-BF16: measured here, folded ResNet50's
gradcam step 18.0 → 9.6 ms per image) and fp32 elsewhere, where bfloat16 is emulated and slower than float32.
Which precision a run's methods choose is steps/precision.py's (some stay fp32 under `auto`); this module says what
the CPU can do and makes the bfloat16 twins.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence


# The CPU flags that make bfloat16 native, and the oneDNN instruction set each needs (ONEDNN_MAX_CPU_ISA).
FAST_BF16_FLAGS = {"amx_bf16": "AVX512_CORE_AMX", "avx512_bf16": "AVX512_CORE_BF16"}
# oneDNN's ISA names from least to most capable (its documented ONEDNN_MAX_CPU_ISA values, with their aliases).
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16")
_ISA_ALIASES = {"AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
                "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16"}


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


def native_bf16(flags: set[str] | None = None, max_isa: str | None = None) -> list[str]:
    """The flags by which TensorFlow's kernels compute bfloat16 natively here: the CPU's (AMX or AVX512-BF16), less
    those that oneDNN may not use under ONEDNN_MAX_CPU_ISA (`max_isa`; default: the environment's). With
    ONEDNN_MAX_CPU_ISA=AVX2 a CPU with AMX behaves, and is treated, as one without it."""
    found = (cpu_flags() if flags is None else flags) & set(FAST_BF16_FLAGS)
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "") if max_isa is None else max_isa
    limit = _ISA_ALIASES.get(limit.strip().upper(), limit.strip().upper())
    if limit in ONEDNN_ISAS:
        found = {f for f in found if ONEDNN_ISAS.index(FAST_BF16_FLAGS[f]) <= ONEDNN_ISAS.index(limit)}
    return sorted(found)


def bf16_support(flags: set[str] | None = None) -> str:
    """How TensorFlow computes bfloat16 here: "native" (AMX or AVX512-BF16 instructions), "emulated" (converted to and
    from float32 around each operation: slower than float32, rounded elsewhere), or "unavailable": the CPU has
    bfloat16 instructions, so TensorFlow hands bfloat16 convolutions to oneDNN, but ONEDNN_MAX_CPU_ISA forbids them
    to oneDNN, which then refuses to run them (TF_ENABLE_ONEDNN_OPTS=0 takes TensorFlow's own kernels instead)."""
    if native_bf16(flags):
        return "native"
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")
    return "unavailable" if onednn and native_bf16(flags, max_isa="DEFAULT") else "emulated"


def bfloat16(steps: Sequence[Any]) -> list[Any]:
    """The steps with every layer that outputs a feature map (4-D) computing in bfloat16 (mixed_bfloat16: float32
    weights, bfloat16 compute). The classifier after the feature maps stays float32: it is little of the work,
    and so predictions are the same whether they come from a whole forward pass or from the explain step."""
    import keras

    policy = keras.DTypePolicy("mixed_bfloat16")
    converted = []
    for step in steps:
        if not all(len(shape) == 4 for shape in step.output_shapes) or not _keras_own(step.layer):
            # The classifier, guided backprop's plain functions and users' own layers stay as they are: a user's
            # code may assume float32 (a comparison with a float32 constant fails on bfloat16), and Keras casts
            # what it is given to the dtype it computes in.
            converted.append(step)
            continue
        converted.append(dataclasses.replace(step, layer=_in_bfloat16(step.layer, policy, {})))
    return converted


def _in_bfloat16(layer: Any, policy: Any, made: dict[int, Any]) -> Any:
    """A twin of a Keras layer computing in bfloat16, and so are the Keras sublayers it calls: each sublayer computes
    in the policy it was made with and casts what it is given to it, so a feature pyramid or a detector's head (a
    layer of layers) would otherwise compute in float32 under a bfloat16 twin; a keras.Sequential among them runs its
    twinned list of layers. `made`: the twins so far, by id, so a sublayer held in two attributes has one twin."""
    import keras

    from explain_cli.model.twins import twin

    if id(layer) in made:
        return made[id(layer)]
    double = made[id(layer)] = twin(layer)
    object.__setattr__(double, "_dtype_policy", policy)  # Keras has no public setter; the twin alone changes
    for name, value in vars(layer).items():
        replaced = _sublayers_in_bfloat16(value, policy, made)
        if replaced is not value:
            object.__setattr__(double, name, replaced)
    if isinstance(layer, keras.Sequential):  # it calls its graph of the user's layers; without one, its own list
        object.__setattr__(double, "_functional", None)
    return double


def _sublayers_in_bfloat16(value: Any, policy: Any, made: dict[int, Any]) -> Any:
    """`value` with its Keras layers (alone, or in a list, tuple or dict) replaced by their bfloat16 twins."""
    import keras

    if isinstance(value, keras.Layer):
        plain = not isinstance(value, keras.Model) or type(value) is keras.Sequential
        return _in_bfloat16(value, policy, made) if _keras_own(value) and plain else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, keras.Layer) for v in value):
        items = [_sublayers_in_bfloat16(v, policy, made) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict) and any(isinstance(v, keras.Layer) for v in value.values()):
        return {k: _sublayers_in_bfloat16(v, policy, made) for k, v in value.items()}
    return value


KERAS_PACKAGES = ("keras", "keras_hub")


def _keras_own(layer: Any) -> bool:
    """A layer of Keras' or keras-hub's own classes, written for any dtype policy."""
    import keras

    return isinstance(layer, keras.Layer) and type(layer).__module__.split(".")[0] in KERAS_PACKAGES
