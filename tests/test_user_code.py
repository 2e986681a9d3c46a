"""Models with code of their own: a registered custom layer (--import), a Lambda (--unsafe-deserialization)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.cli.main import cli

LAYER_CODE = '''
import keras


@keras.saving.register_keras_serializable(package="explain_test")
class Scale(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def small_model(keras, first_layer):
    layers = keras.layers
    inputs = keras.Input((24, 24, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(first_layer(inputs))
    return keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))


def forget(keras, module: str) -> None:
    """This process no longer knows the custom class, as a fresh `explain` process would not."""
    keras.saving.get_custom_objects().pop("explain_test>Scale", None)
    sys.modules.pop(module, None)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_custom_layer_loads_once_its_code_is_imported(suffix, keras, image, tmp_path, monkeypatch):
    code = tmp_path / "userlayers.py"
    code.write_text(LAYER_CODE)
    spec = importlib.util.spec_from_file_location("userlayers", code)
    module = importlib.util.module_from_spec(spec)
    sys.modules["userlayers"] = module
    spec.loader.exec_module(module)
    path = tmp_path / f"custom{suffix}"
    small_model(keras, module.Scale(0.5, name="scale")).save(path)
    forget(keras, "userlayers")

    refused = run("gradcam", image, "--model", path, "-o", tmp_path / "out")
    fix = "--import userlayers" if suffix == ".keras" else "--import MODULE|FILE.py (the code that defines it)"
    assert refused.exit_code == 1 and refused.stderr == (
        f"error: {path}: cannot load the model: it uses the custom class or function 'Scale' (registered as "
        f"'explain_test>Scale'), which is not defined here: pass {fix}\n"
    )
    by_file = run("gradcam", image, "--model", path, "-o", tmp_path / "out", "--import", code)
    assert by_file.exit_code == 0, by_file.output
    assert len(list((tmp_path / "out").glob("photo.gradcam.*.jpg"))) == 1
    forget(keras, "userlayers")
    monkeypatch.chdir(tmp_path)  # a module name is found beside the user, as `python -m` would find it
    by_name = run("layers", "--model", path, "--import", "userlayers")
    assert by_name.exit_code == 0 and by_name.stdout.split()[:2] == ["scale", "(24,"], by_name.output
    forget(keras, "userlayers")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_layer_needs_the_explicit_opt_in(suffix, keras, image, tmp_path):
    path = tmp_path / f"lambda{suffix}"
    small_model(keras, keras.layers.Lambda(lambda t: t / 255.0, name="scale")).save(path)
    refused = run("gradcam", image, "--model", path, "-o", tmp_path / "out")
    assert refused.exit_code == 1 and refused.stderr == (
        f"error: {path}: cannot load the model: it holds a Lambda layer, whose Python code is stored in the file "
        "and runs when it loads; if you trust the file, pass --unsafe-deserialization\n"
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.jpg"))
    trusted = run("gradcam", image, "--model", path, "-o", tmp_path / "out", "--unsafe-deserialization")
    assert trusted.exit_code == 0, trusted.output
    assert len(list((tmp_path / "out").glob("photo.gradcam.*.jpg"))) == 1


def test_import_errors_are_one_line(image, tmp_path):
    missing = run("layers", "--model", image, "--import", tmp_path / "nowhere.py")
    assert missing.exit_code == 2 and f"{tmp_path / 'nowhere.py'}: no such file" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('the user code failed')\n")
    failed = run("layers", "--model", image, "--import", broken)
    assert failed.stderr == f"error: --import {broken}: RuntimeError: the user code failed\n"
    assert failed.exit_code == 1


def test_help_states_the_risk():
    text = run("gradcam", "--help").output
    assert "--unsafe-deserialization" in text and "such code can do anything your account can" in " ".join(text.split())


PICKY_CODE = '''
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="explain_test")
class Picky(keras.layers.Layer):
    """A block with sublayers (so explain runs the model once on random images to list them) that refuses inputs
    in [0, 1), as a layer that checks its pixels are 0-255 would."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="inner_conv")

    def call(self, x):
        tf.debugging.assert_greater_equal(tf.reduce_max(x), 1.0, message="pixels must be 0-255")
        return self.conv(x)
'''


def picky_model(keras, folder: Path) -> tuple[Path, Path]:
    """small_model behind Picky, saved to a file; its code, written beside it, is the only way to load it again."""
    code = folder / "picky.py"
    code.write_text(PICKY_CODE)
    spec = importlib.util.spec_from_file_location("picky", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = folder / "picky.keras"
    small_model(keras, module.Picky(name="picky")).save(path)
    keras.saving.get_custom_objects().pop("explain_test>Picky", None)
    return path, code


def test_a_model_that_cannot_run_on_random_images_says_why_with_verbose_and_is_explained(keras, image, tmp_path):
    path, code = picky_model(keras, tmp_path)
    result = run("gradcam", image, "--model", path, "--import", code, "-o", tmp_path / "out", "-v")
    assert result.exit_code == 0, result.output
    assert ("note: picky.keras: running it on two random images to list the layers inside its subclassed layers "
            "failed (InvalidArgumentError: pixels must be 0-255") in result.stderr
    assert "gradcam at layer conv (default)" in result.stderr  # the graph's own layers are still there to cut
    quiet = run("gradcam", image, "--model", path, "--import", code, "-o", tmp_path / "quiet")
    assert "note:" not in quiet.stderr


def test_a_users_own_layer_computes_in_float32_whatever_the_precision(keras, image, tmp_path):
    """bf16 twins only Keras' own layers: a user's code may assume float32 (Picky compares with a float32 constant,
    which failed with a TypeError on bfloat16)."""
    from explain_cli.model import precision

    if precision.bf16_support() == "unavailable":
        pytest.skip("ONEDNN_MAX_CPU_ISA denies oneDNN bfloat16 (test_precision.py)")
    path, code = picky_model(keras, tmp_path)
    result = run("gradcam", image, "--model", path, "--import", code, "-o", tmp_path / "out", "--precision", "bf16")
    assert result.exit_code == 0, result.output


def test_an_unexpected_failure_while_listing_layers_is_not_hidden(keras):
    import tensorflow as tf

    from explain_cli.model import graph

    class Broken(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            if tf.executing_eagerly():  # traced while the model is built; fails when it is run
                raise RuntimeError("a defect in the layer")
            return self.dense(x)

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Broken()(keras.layers.Conv2D(2, 3)(inputs)))
    with pytest.raises(RuntimeError, match="a defect in the layer"):
        graph.flatten(model)


def test_a_batch_the_model_fails_on_is_one_line_an_image_and_the_run_goes_on(keras, tmp_path):
    """Picky refuses the dark image once it is scaled to [-1, 1]: TensorFlow's error, with its stack of where the
    node was made, becomes one line for each image of that batch (an empty file beside it keeps its own); the next
    batch is explained."""
    path, code = picky_model(keras, tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_empty.png").write_bytes(b"")  # in the failing batch too: it keeps its own reason
    for name, value in (("b_dark", 60), ("c_white", 255), ("d_bright", 255)):
        Image.fromarray(np.full((30, 40, 3), value, np.uint8)).save(folder / f"{name}.png")
    result = CliRunner().invoke(cli, ["gradcam", str(folder), "--model", str(path), "--import", str(code),
                                      "--preprocess", "tf", "--runtime", "tensorflow", "--batch-size", "2",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    failed = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert failed == [f"error: {folder / 'a_empty.png'}: empty file",
                      f"error: {folder / 'b_dark.png'}: the model failed as it ran: assertion failed: [pixels must be "
                      "0-255] [Condition x >= y did not hold element-wise:] [x (picky_1/Max:0) = ] [-0.529411733] "
                      "[y (picky_1/assert_greater_equal/y:0) = ] [1]"]
    written = [json.loads(line)["image"] for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(p).name for p in written) == ["c_white.png", "d_bright.png"]


def test_tensorflows_errors_are_told_by_their_last_line_and_others_are_not_taken():
    import tensorflow as tf

    from explain_cli.errors import model_failure

    @tf.function
    def picky(x):
        tf.debugging.assert_greater_equal(tf.reduce_max(x), 1.0, message="pixels must be 0-255")
        return x

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        picky(tf.zeros((2, 2)))
    assert str(raised.value).count("\n") > 2  # TensorFlow's message: its framing and the stack, then what failed
    assert model_failure(raised.value).startswith("assertion failed: [pixels must be 0-255]")
    assert model_failure(ValueError("explain's own defect")) is None  # a bug stays a traceback
