"""On a terminal: a live progress bar below the results, never on the same line as one, with an honest ETA."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyte
import pytest
from PIL import Image

from explain_cli.cli.console import Eta

IMAGES, BATCH = 24, 4
BAR = re.compile(r"explain .* (\d+)/(\d+) images (\d+:\d\d:\d\d)(?: +eta (\d+):(\d\d):(\d\d))?")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("terminal") / "photos"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def run_on_terminal(arguments: list[str], stdout_to_pipe: bool = False) -> tuple[list[list[str]], bytes, float]:
    """Run explain with stderr (and stdout, unless piped) on a pseudo-terminal; return every screen the
    terminal showed on the way (as a terminal emulator renders the bytes), stdout if piped, and the time."""
    controller, terminal = pty.openpty()
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "240", "LINES": "60"}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "explain_cli", *arguments], stdin=subprocess.DEVNULL, env=environment, stderr=terminal,
        stdout=subprocess.PIPE if stdout_to_pipe else terminal,
    )
    os.close(terminal)
    screen = pyte.Screen(240, 400)  # wide enough for a long temporary path, tall enough that nothing scrolls away
    stream = pyte.ByteStream(screen)
    screens = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process is done with it
            break
        if not chunk:
            break
        # A screen after every piece that draws the bar, not only after every read: a busy machine reads late, and
        # one read can hold a bar drawn and erased again.
        pieces = re.split(rb"(?=\x1b)", chunk)
        for i, piece in enumerate(pieces):
            stream.feed(piece)
            if b"images" in piece or i == len(pieces) - 1:
                screens.append([line.rstrip() for line in screen.display])
    piped = process.stdout.read() if stdout_to_pipe else b""
    assert process.wait(timeout=300) == 0
    os.close(controller)
    return screens, piped, time.monotonic() - started


def test_results_print_above_the_bar_and_the_eta_waits_for_a_measured_rate(tiny_model, photos, tmp_path):
    screens, _, elapsed = run_on_terminal(["gradcam", str(photos), "--model", str(tiny_model), "-o",
                                           str(tmp_path / "out"), "--batch-size", str(BATCH)])
    bars = 0
    for screen in screens:
        for line in screen:
            bar = BAR.search(line)
            # A result's line holds that result alone (or, mid-write, the start of it), whatever a bar looks like.
            if "photos/p" in line:
                assert re.fullmatch(r"/\S*/photos/p[\d.png]*", line), f"a result shares its line: {line!r}"
            if re.match(r"\s+\d\. ", line):
                assert re.fullmatch(r"\s+\d\. \S*( +\d*( +[\d.]*%?)?)?", line), f"a result shares its line: {line!r}"
            if bar:
                bars += 1
                done, total = int(bar[1]), int(bar[2])
                assert total == IMAGES
                if bar[4] is not None:  # an ETA is only shown once a batch after the first was measured
                    assert done >= 2 * BATCH, line
                    assert int(bar[4]) * 3600 + int(bar[5]) * 60 + int(bar[6]) <= elapsed, line
    assert bars > 0, "the bar was never drawn"
    final = [line for line in screens[-1] if line]
    shown = [line for line in final if line.startswith(str(photos))]
    assert shown == [f"{photos / f'p{i:02d}.png'}" for i in range(IMAGES)]  # each result once, in order
    assert not any(BAR.search(line) for line in final)  # the bar is gone at the end...
    assert re.search(rf"{IMAGES} of {IMAGES} images done", final[-1])  # ...and the summary is last


def test_a_piped_stdout_gets_data_only_while_the_terminal_gets_the_bar(tiny_model, photos, tmp_path):
    screens, piped, _ = run_on_terminal(["predict", str(photos), "--model", str(tiny_model), "--batch-size",
                                         str(BATCH)], stdout_to_pipe=True)
    rows = piped.decode().splitlines()
    assert len(rows) == IMAGES * 3 and all(re.fullmatch(r"[^\t\x1b]+\t\d\t\d+\t[^\t]+\t[01]\.\d{6}", r) for r in rows)
    assert any(BAR.search(line) for screen in screens for line in screen)


def test_the_eta_is_measured_over_whole_batches_after_the_first():
    eta = Eta(total=100, batch_size=10)
    assert eta.update(10, now=30.0) is None  # the first batch took 30 s: the model's load and trace
    assert eta.update(11, now=30.1) is None  # within a batch: images come out all at once
    assert eta.update(20, now=32.0) == pytest.approx(80 / 5)  # 10 images in 2 s: 80 left at 5 a second
    assert eta.update(40, now=36.0) == pytest.approx(60 / 5)
    assert eta.update(100, now=48.0) == 0.0
    short = Eta(total=5, batch_size=32)
    assert short.update(5, now=3.0) is None  # one batch: nothing to measure a rate on, so no ETA
