"""Any folder a user points it at: no crash, no hang, nothing lost, resumable."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from explain_cli.inputs import sources as inputs
from explain_cli.io import files as output
from explain_cli.cli.main import cli
from explain_cli.errors import BadInput
from tests import corpus


def run(*args, stdin=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=stdin, catch_exceptions=False)


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(f"{output.TEMPORARY_PREFIX}*"))


def test_uncurated_folder_one_error_per_bad_file_and_every_good_one_explained(tiny_model, tmp_path):
    good, bad = corpus.build(tmp_path / "dump")
    assert len(bad) >= 50
    out = tmp_path / "out"
    result = run("gradcam", tmp_path / "dump", "-o", out, "--model", tiny_model, "--batch-size", "8")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    named = sorted(line.split(": ", 2)[1] for line in errors)
    assert named == sorted(str(p) for p in bad)  # exactly one line per bad file, none for the others
    explained = sorted(r["image"] for r in output.read_manifest(out))
    assert explained == sorted(str(p) for p in good)
    for record in output.read_manifest(out):
        assert (out / record["overlay"]).is_file()
    assert temporaries(out) == []
    expected = ("error: ", "warning: ", "tiny.keras: gradcam at layer", f"{len(good)} of {len(good) + len(bad)} images")
    assert [line for line in result.stderr.splitlines() if not line.startswith(expected)] == []
    assert f"{len(bad)} failed: " in result.stderr


def test_verbose_says_how_awkward_images_were_read(tiny_model, tmp_path):
    corpus.build(tmp_path / "dump")
    names = ["animated.gif", "grey16.png", "rgba.png"]
    result = run("predict", *(tmp_path / "dump" / n for n in names), "--model", tiny_model, "--verbose")
    assert result.exit_code == 0
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert re.fullmatch(r"note: precision (bf16|fp32) \(auto: .+\)", notes.pop(0))  # which precision, and why
    assert re.fullmatch(r"note: tiny\.keras: runtime (openvino|tensorflow) .+", notes.pop(0))  # which runtime
    assert notes == [
        f"note: {tmp_path / 'dump' / 'animated.gif'}: 3 frames; using the first",
        f"note: {tmp_path / 'dump' / 'grey16.png'}: 16-bit grey scaled to 8 bits",
        f"note: {tmp_path / 'dump' / 'rgba.png'}: transparent pixels shown on mid grey",
    ]


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    rgb = inputs.decode(inputs.Source(path, str(path), PurePosixPath("deep"))).rgb
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]


def test_max_pixels_refuses_before_decoding(tiny_model, tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    result = run("predict", path, "--model", tiny_model, "--max-pixels", "50000")
    assert result.exit_code == 1
    assert f"error: {path}: 300x200 is 60,000 pixels, over --max-pixels 50,000" in result.stderr


def test_an_unknown_extension_named_explicitly_is_an_error(tiny_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = run("predict", notes, "--model", tiny_model)
    assert result.exit_code == 1 and f"error: {notes}: not an image (Pillow cannot identify it)" in result.stderr


def test_unwritable_output_folder_is_one_line(tiny_model, photo_tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run("gradcam", photo_tree, "--model", tiny_model, "-o", blocker / "out")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot write to {blocker / 'out'}: Not a directory"


def test_a_full_disk_stops_the_batch_with_one_message(tiny_model, photo_tree, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output, "write_atomic", full)
    result = run("gradcam", photo_tree, "--model", tiny_model, "-o", tmp_path / "out")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: cannot write to {tmp_path / 'out'}: No space left on device"]
    assert "0 of 3 images done" in result.stderr


# Valid images of several formats, for the decoder's property tests.
SEEDS = {fmt: corpus.encoded(corpus._photo(24, 16), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}
DECODE_DIR = Path(tempfile.mkdtemp(prefix="explain-decode-"))


def decodes_or_says_why(data: bytes) -> None:
    path = DECODE_DIR / "case.img"
    path.write_bytes(data)
    try:
        picture = inputs.decode(inputs.Source(path, "case.img", PurePosixPath("case")), max_pixels=4_000_000)
    except BadInput as error:
        assert error.path == "case.img" and error.reason and "\n" not in error.reason
    else:
        assert picture.rgb.ndim == 3 and picture.rgb.shape[2] == 3 and picture.rgb.dtype == np.uint8


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=4096))
def test_random_bytes_never_escape_the_decoder(data):
    decodes_or_says_why(data)


@PROPERTY
@given(st.sampled_from(sorted(SEEDS)), st.floats(0.0, 1.0))
def test_truncated_images_never_escape_the_decoder(fmt, fraction):
    data = SEEDS[fmt]
    decodes_or_says_why(data[: int(len(data) * fraction)])


@PROPERTY
@given(st.sampled_from(sorted(SEEDS)), st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1,
                                                max_size=6))
def test_header_flips_never_escape_the_decoder(fmt, flips):
    data = bytearray(SEEDS[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    decodes_or_says_why(bytes(data))


# Interruptions: a real process, killed at a random moment, then finished with --skip-existing.

def _folder_of_photos(root: Path, count: int) -> Path:
    rng = np.random.default_rng(17)
    root.mkdir()
    for i in range(count):
        pixels = rng.integers(0, 256, (200 + 7 * (i % 5), 260, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.jpg", quality=85)
    return root


def _explain_process(folder: Path, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", str(model), "-o", str(out),
               "--batch-size", "2", "--top-k", "2", "--save-heatmap", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _manifest_lines(out: Path) -> int:
    try:
        return (out / output.MANIFEST).read_text().count("\n")
    except FileNotFoundError:
        return 0


def assert_accounted(out: Path, stderr: str) -> None:
    """After any stop: the summary's counts equal the manifest, and every file in `out` has its line."""
    done, explanations = (int(n) for n in re.search(r"(\d+) of \d+ images done, (\d+) explanations", stderr).groups())
    records = output.read_manifest(out)
    assert (done, explanations) == (len({r["image"] for r in records}), len(records)), stderr[-2000:]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != output.MANIFEST}
    assert on_disk == set(output.files_of(records))


def _final_state(out: Path) -> tuple[list[tuple], dict[str, np.ndarray]]:
    records = [(r["image"], r["class_index"], r["rank"], r["overlay"], r["heatmap"]) for r in output.read_manifest(out)]
    files = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file() and p.name != output.MANIFEST}
    arrays = {name: (np.load(p) if name.endswith(".npy") else np.asarray(Image.open(p), dtype=np.int16))
              for name, p in files.items()}
    return records, arrays


@pytest.fixture(scope="module")
def interrupted_setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    folder = _folder_of_photos(root / "photos", 60)
    reference = root / "reference"
    done = _explain_process(folder, reference, tiny_model)
    _, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr
    return folder, _final_state(reference)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(signum, code, interrupted_setup, tiny_model, tmp_path):
    folder, (expected_records, expected_files) = interrupted_setup
    out = tmp_path / "out"
    moment = random.Random(int(signum)).randint(1, 60)  # manifest lines to wait for (of 120)
    process = _explain_process(folder, out, tiny_model)
    deadline = time.monotonic() + 300
    while _manifest_lines(out) < moment and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == code, f"exit {process.returncode}: {stderr[-3000:]}"  # stopped mid-run
    assert "Traceback" not in stderr
    if signum != signal.SIGKILL:
        assert f"interrupted ({signal.Signals(signum).name})" in stderr and "images done" in stderr
        assert temporaries(out) == []
        assert_accounted(out, stderr)
    for record in output.read_manifest(out):  # a manifest line is only written once its files exist
        assert (out / record["overlay"]).is_file() and (out / record["heatmap"]).is_file()

    assert_resumes_exactly(folder, out, tiny_model, expected_records, expected_files)


def assert_resumes_exactly(folder: Path, out: Path, model: Path, expected_records: list, expected_files: dict) -> None:
    resumed = _explain_process(folder, out, model, "--skip-existing")
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    records, files = _final_state(out)
    assert records == expected_records  # same lines, same order, none twice, none lost
    assert sorted(files) == sorted(expected_files) and temporaries(out) == []
    for name, array in files.items():  # batches differ after a resume: allow float noise only
        assert np.abs(array - expected_files[name]).max() <= (1e-4 if name.endswith(".npy") else 3), name


def test_a_closed_stdout_leaves_only_accounted_files_and_resumes_exactly(interrupted_setup, tiny_model, tmp_path):
    """`explain gradcam ... | head -n 1`: images rendered ahead of stdout still get their manifest lines."""
    folder, (expected_records, expected_files) = interrupted_setup
    out = tmp_path / "out"
    process = _explain_process(folder, out, tiny_model)
    assert process.stdout.readline()
    process.stdout.close()  # the reader leaves
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr and temporaries(out) == []
    assert 0 < _manifest_lines(out) < len(expected_records)
    assert_accounted(out, stderr)
    assert_resumes_exactly(folder, out, tiny_model, expected_records, expected_files)


def test_a_disk_that_fills_mid_run_leaves_only_accounted_files(tiny_model, tmp_path, monkeypatch):
    folder = _folder_of_photos(tmp_path / "photos", 12)
    reference, out = tmp_path / "reference", tmp_path / "out"
    options = ["--batch-size", "2", "--top-k", "2", "--save-heatmap", "--figure"]
    assert run("gradcam", folder, "--model", tiny_model, "-o", reference, *options).exit_code == 0
    writes, full = [0], threading.Event()
    write_atomic, append = output.write_atomic, output.Manifest.append

    def filling(path, data):  # the 31st file does not fit, nor does anything after it
        writes[0] += 1
        if writes[0] > 30:
            full.set()
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_atomic(path, data)

    def appending(manifest, records):
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        append(manifest, records)

    monkeypatch.setattr(output, "write_atomic", filling)
    monkeypatch.setattr(output.Manifest, "append", appending)
    stopped = run("gradcam", folder, "--model", tiny_model, "-o", out, *options)
    assert stopped.exit_code == 1
    assert [line for line in stopped.stderr.splitlines() if line.startswith("error")] == [
        f"error: cannot write to {out}: No space left on device"]
    assert 0 < len(output.read_manifest(out)) < 24 and temporaries(out) == []
    assert_accounted(out, stopped.stderr)

    monkeypatch.undo()  # space again: the rerun finishes the batch
    assert run("gradcam", folder, "--model", tiny_model, "-o", out, *options, "--skip-existing").exit_code == 0
    key = lambda r: (r["image"], r["rank"])  # noqa: E731
    assert sorted(output.read_manifest(out), key=key) == sorted(output.read_manifest(reference), key=key)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == {
        p.relative_to(reference).as_posix() for p in reference.rglob("*")}


def test_skip_existing_redoes_images_whose_files_are_missing(tiny_model, photo_tree, tmp_path):
    out = tmp_path / "out"
    assert run("gradcam", photo_tree, "--model", tiny_model, "-o", out).exit_code == 0
    first = output.read_manifest(out)
    (out / first[1]["overlay"]).unlink()
    again = run("gradcam", photo_tree, "--model", tiny_model, "-o", out, "--skip-existing")
    assert again.exit_code == 0
    assert "2 skipped (already explained)" in again.stderr
    assert [r["image"] for r in output.read_manifest(out)] == [r["image"] for r in first] + [first[1]["image"]]
    assert (out / first[1]["overlay"]).is_file()
    done = run("gradcam", photo_tree, "--model", tiny_model, "-o", out, "--skip-existing")
    assert done.exit_code == 0 and done.stderr == "0 of 0 images done; 3 skipped (already explained)\n"


def test_a_closed_pipe_stops_quietly(tiny_model, tmp_path):
    """`explain predict dir | head -n 1`: more output than a pipe holds, and the reader leaves early."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / f"{i:04d}.png")
    command = f"{sys.executable} -m explain_cli predict {folder} --model {tiny_model} --batch-size 256 | head -n 1"
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, timeout=300)
    assert len(done.stdout.splitlines()) == 1
    assert done.returncode == 141, done.stderr  # SIGPIPE's conventional status, from explain itself
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_a_signal_that_a_library_turns_into_another_error_still_exits_as_interrupted(tiny_model, photo_tree,
                                                                                     tmp_path, monkeypatch):
    """TensorFlow converting an array calls back into Python; a signal raised there reaches us as a TypeError."""
    from explain_cli.steps import compiled as explainer
    from explain_cli.running import interrupts

    compile_explain = explainer.compile_explain

    def converting(*args, **kwargs):
        step = compile_explain(*args, **kwargs)

        def run_step(batch, classes=None):
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while "TensorFlow" holds the array
                time.sleep(1)
            except interrupts.Interrupted:
                raise TypeError("Binding inputs to tf.function failed: __array__ returned a result with an "
                                "exception set") from None
            return step(batch, classes)

        return run_step

    monkeypatch.setattr(explainer, "compile_explain", converting)
    result = run("gradcam", photo_tree, "--model", tiny_model, "-o", tmp_path / "out")
    assert result.exit_code == 143, result.output
    assert "interrupted (SIGTERM)" in result.stderr and "images done" in result.stderr
    assert "Traceback" not in result.stderr
