"""Every keras-hub task model explain claims runs in bfloat16 (`--precision bf16`, what `auto` picks on a CPU with
native bfloat16): classifiers, transformers, segmenters and detectors, saved as files and loaded as users load them,
in the configurations they ship, including layers left unbuilt until first called (a pyramid's merge)."""

from __future__ import annotations

import numpy as np
import pytest

from explain_cli import Detector, Explainer
from explain_cli.model.precision import bf16_support
from tests.test_detect import _dfine, _retinanet
from tests.test_free_size import hub_resnet
from tests.test_segment import deeplab, segformer
from tests.test_transformers import _deit, _swin, _vit

keras_hub = pytest.importorskip("keras_hub")
if bf16_support() == "unavailable":
    pytest.skip("ONEDNN_MAX_CPU_ISA forbids the CPU's bfloat16 instructions", allow_module_level=True)

# name: (make(keras) -> model, a detector?, the size to feed it where it takes any)
MODELS = {
    "resnet classifier": (lambda keras: hub_resnet(keras_hub, keras), False, None),
    "vit": (lambda keras: _vit(keras, preprocessor=True), False, None),
    "deit": (_deit, False, None),
    "swin": (_swin, False, None),
    "deeplab v3": (lambda keras: deeplab(keras_hub, keras), False, None),
    "segformer": (lambda keras: segformer(keras_hub, keras), False, None),
    "retinanet": (lambda keras: _retinanet(keras_hub, keras, 64), True, None),
    "retinanet of any size": (lambda keras: _retinanet(keras_hub, keras, 64, free=True), True, (64, 64)),
    "d-fine": (lambda keras: _dfine(keras_hub, keras, 64), True, None),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_keras_hub_model_saved_as_a_file_runs_in_bf16_as_in_fp32(name, keras, tmp_path):
    make, detects, size = MODELS[name]
    path = tmp_path / "model.keras"
    make(keras).save(path)
    photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    if detects:
        made = {p: Detector(path, precision=p, input_size=size, min_score=0.0, max_boxes=2) for p in ("bf16", "fp32")}
        found = {p: made[p].detect([photo])[0][1] for p in made}
        assert made["bf16"].precision == "bf16" and len(found["bf16"]) == len(found["fp32"]) == 2
        explained = made["bf16"].explain([photo])
    else:
        made = {p: Explainer(path, precision=p, input_size=size) for p in ("bf16", "fp32")}
        predicted = {p: made[p].predict([photo])[0].probabilities for p in made}
        np.testing.assert_allclose(predicted["bf16"], predicted["fp32"], atol=0.05)
        explained = made["bf16"].explain([photo])
    assert explained and all(np.isfinite(e.map).all() for e in explained)
