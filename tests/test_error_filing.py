"""Errors filed by what they are: an image the model refuses is that image's line; memory running out ends the run in
one line with what to try, everything finished accounted; a failure of explain's own step is a bug (a traceback,
never a bad image); what errors="skip" skipped is said; a usage error writes nothing; stderr holds explain's lines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli import BadInput, ExplainError, Explainer
from explain_cli.cli.main import cli
from explain_cli.errors import StepError
from tests.synthetic import make_scene


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [make_scene(rng).image for _ in range(n)]


def failing_after(calls: int, error: Exception):
    """A stand-in for a compiled step: the real one for `calls` batches, then `error`."""
    seen = []

    def wrap(step):
        def run(batch, *args, **kwargs):
            seen.append(len(batch))
            if len(seen) > calls:
                raise error
            return step(batch, *args, **kwargs)
        return run

    return wrap


def tensorflow_error(kind: str, message: str) -> Exception:
    import tensorflow as tf

    return getattr(tf.errors, kind)(None, None, message)


def test_out_of_memory_ends_the_run_in_one_line_with_what_finished_accounted(tiny_model, tmp_path, monkeypatch):
    for i, image in enumerate(images(3)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    original = Explainer.compute
    wrap = failing_after(1, tensorflow_error("ResourceExhaustedError", "OOM when allocating tensor"))
    monkeypatch.setattr(Explainer, "compute", lambda self, *a, **k: wrap(original(self, *a, **k)))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["gradcam", *(str(tmp_path / f"{i}.png") for i in range(3)), "--model",
                                      str(tiny_model), "--batch-size", "1", "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: out of memory computing a batch of 1 images: try a smaller --batch-size (batch_size= in Python)")
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(tmp_path / "0.png")]  # the first batch, finished, accounted
    assert (out / lines[0]["overlay"]).is_file()


def test_a_failure_of_explains_own_step_is_a_bug_not_a_bad_image(tiny_model, monkeypatch):
    explainer = Explainer(tiny_model, precision="fp32")
    original = explainer._compile
    wrap = failing_after(0, tensorflow_error("InvalidArgumentError", "explain's own op failed"))
    monkeypatch.setattr(explainer, "_compile", lambda *a, **k: wrap(original(*a, **k)))
    with pytest.raises(StepError, match="^explain's step failed on a batch the model itself runs: explain's own op"):
        explainer.explain(images(2), errors="skip")


def test_what_skip_skipped_is_said_with_its_keys(tiny_model):
    explainer = Explainer(tiny_model, precision="fp32")
    given = [images(1)[0], np.zeros((5, 5, 5), np.uint8)]
    skipped = r"^skipped 1 image that could not be used: 1: has 5 channels \(5 bands\); the model takes 3"
    with pytest.warns(RuntimeWarning, match=skipped):
        explained = explainer.explain(given, errors="skip")
    assert [e.source for e in explained] == [0]
    heard = []
    quiet = Explainer(tiny_model, precision="fp32", on_note=lambda line, warning: heard.append((line, warning)))
    quiet.predict(given, errors="skip")
    assert heard[-1][1] and heard[-1][0].startswith("skipped 1 image that could not be used: 1: ")
    with pytest.raises(BadInput, match="^1: has 5 channels"):
        explainer.explain(given)


def test_a_usage_error_writes_nothing(tiny_model, tmp_path):
    Image.fromarray(images(1)[0]).save(tmp_path / "x.png")
    out = tmp_path / "new" / "out"
    result = CliRunner().invoke(cli, ["segment", str(tmp_path / "x.png"), "--model", str(tiny_model), "-o", str(out)])
    assert result.exit_code == 2 and "not classes per pixel" in result.stderr
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    (out / "manifest.jsonl").write_text("")  # a folder and a manifest that were there stay
    CliRunner().invoke(cli, ["segment", str(tmp_path / "x.png"), "--model", str(tiny_model), "-o", str(out)])
    assert (out / "manifest.jsonl").is_file()


def test_a_model_file_without_its_runtime_is_one_line_on_stderr(tmp_path):
    """No TensorFlow start-up lines before it, with ONNX Runtime missing."""
    Image.fromarray(images(1)[0]).save(tmp_path / "x.png")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.argv = ['explain', 'cam', sys.argv[1], '--model', "
            "sys.argv[2], '--method', 'rise', '-o', sys.argv[3]]\nfrom explain_cli.cli.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png"), str(tmp_path / "m.onnx"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {tmp_path / 'm.onnx'}: ONNX models need ONNX Runtime: pip install 'explain-cli[onnx]'"]
    assert not (tmp_path / "out").exists()


def test_the_library_raises_out_of_memory_as_an_explain_error(tiny_model, monkeypatch):
    explainer = Explainer(tiny_model, precision="fp32")
    original = explainer._predict
    wrap = failing_after(0, MemoryError())
    monkeypatch.setattr(explainer, "_predict", lambda: wrap(original()))
    with pytest.raises(ExplainError, match="^out of memory computing a batch of 2 images"):
        explainer.predict(images(2), errors="skip")
