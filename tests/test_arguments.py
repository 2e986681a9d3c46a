"""Every argument is checked where it enters the library: a call returns a result or raises an ExplainError (a
BadArgument naming the argument), never anything else, whatever it is given."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explain_cli import BadArgument, Detector, ExplainError, Explainer

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=3), st.just([1, 2]))


def maybe(*good: object) -> st.SearchStrategy:
    """A good value or junk, the good more often."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), JUNK)


CONSTRUCTOR = {
    "method": maybe("gradcam", "gradcam++", "scorecam", "vanilla", "smoothgrad", "rise", "occlusion", "random"),
    "precision": maybe("auto", "fp32"), "preprocess": maybe(None, "unit", "tf", "none"),
    "score": maybe("logit", "probability"), "counterfactual": maybe(False, True), "max_masks": maybe(2, 8),
    "samples": maybe(1, 2), "noise": maybe(0.1, 0.0), "steps": maybe(2, 4), "seed": maybe(0, 7),
    "batch_size": maybe(1, 4), "threshold": maybe(0.5, 0.9), "min_area": maybe(0.01), "cells": maybe(2, 4),
    "keep": maybe(0.5, 1.0), "window": maybe(None, 4), "stride": maybe(None, 2), "runtime": maybe("tensorflow"),
    "arrays": maybe("auto", "input", "pixels"), "layer": maybe(None, "last"), "output_index": maybe(None),
}
CALL = {"top_k": maybe(None, 1, 2), "errors": maybe("raise", "skip"), "classes": maybe(None, 0, [0, 1], "1")}


@pytest.fixture(scope="module")
def model(keras):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="last")(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(made=st.fixed_dictionaries({"masks": maybe(8, 16)}, optional=CONSTRUCTOR),
       call=st.fixed_dictionaries({}, optional=CALL))
def test_the_explainer_returns_a_result_or_an_explain_error(model, made, call):
    image = np.random.default_rng(0).integers(0, 256, (20, 18, 3)).astype(np.uint8)
    try:
        explained = Explainer(model, **made).explain([image, image.astype(np.float32)[:16, :16]], **call)
    except ExplainError:
        return
    assert all(np.isfinite(e.map).all() for e in explained)


@pytest.mark.parametrize("argument, value, message", [
    ("batch_size", 0, "batch_size is a whole number ≥ 1, not 0"),
    ("batch_size", -1, "batch_size is a whole number ≥ 1, not -1"),
    ("preprocess", "bogus", "preprocess is one of caffe, tf, torch, unit, none or a function (pixels 0-255 -> the "
                            "model's input), not 'bogus'"),
    ("precision", "fp16", "precision is one of auto, fp32, bf16, int8, not 'fp16'"),
    ("window", 0, "window is a whole number ≥ 1, not 0"),
    ("samples", 0, "samples is a whole number ≥ 1, not 0"),
    ("masks", 0, "masks is a whole number ≥ 1, not 0"),
    ("noise", float("nan"), "noise is a number ≥ 0, not nan"),
])
def test_each_bad_argument_is_named_when_the_explainer_is_made(model, argument, value, message):
    with pytest.raises(BadArgument) as caught:
        Explainer(model, **{argument: value})
    assert str(caught.value) == message and caught.value.option == "--" + argument.replace("_", "-")


def test_a_detectors_arguments_are_checked_too(model):
    with pytest.raises(BadArgument, match=r"^max_boxes is a whole number ≥ 1, not 0$"):
        Detector(model, max_boxes=0)
    with pytest.raises(BadArgument, match=r"^min_score is a number between 0 and 1, not 2$"):
        Detector(model, min_score=2)
