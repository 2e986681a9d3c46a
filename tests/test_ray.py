"""--engine ray: the same outputs as a run here, exactly once even when a worker dies, the same errors."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.io import files as output
from explain_cli.cli.main import cli

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI"):
        raise ImportError("CI installs the Ray extra: its tests must run there")
    pytest.skip("the Ray extra is not installed: pip install -e '.[test,ray]'", allow_module_level=True)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "photos"
    rng = np.random.default_rng(8)
    for i in range(24):
        (root / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (50 + i, 60, 3), dtype=np.uint8)).save(root / f"part{i % 2}/{i:02d}.png")
    (root / "part0" / "broken.png").write_text("not an image")
    return root


def own_workers(marker: str) -> list[int]:
    """The Ray workers of the runs started with `marker` in their environment (every process of a run's own Ray
    session inherits it): on a shared machine, other people's Ray workers are none of a test's business."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes() \
                    and b"MapWorker" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(found)


def same_records(ours: list[dict], theirs: list[dict]) -> None:
    """The same lines in the same order; numbers to float32's rounding, which a batch of another size may move."""
    def numbers(value):
        return [numbers(v) for v in value] if isinstance(value, list) else (
            pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value)

    assert ours == [{key: numbers(value) for key, value in record.items()} for record in theirs]


def marked() -> tuple[str, dict[str, str]]:
    """A marker for one run, and the environment that carries it."""
    marker = f"explain-test-{uuid.uuid4().hex}"
    return marker, {**os.environ, "EXPLAIN_TEST_RUN": marker}


def explain(folder: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", str(model), "-o", str(out),
            "--top-k", "2", "--save-heatmap", "--batch-size", "3", *extra]


def state(out: Path) -> tuple[list, dict]:
    records = output.read_manifest(out)
    maps = {r["heatmap"]: np.load(out / r["heatmap"]) for r in records}
    return records, maps


@pytest.fixture(scope="module")
def here(folder, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("here") / "out"
    done = subprocess.run(explain(folder, out, tiny_model), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # the broken file
    return out, done


def test_ray_gives_the_same_outputs_errors_and_exit_code(folder, tiny_model, here, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(explain(folder, out, tiny_model, "--engine", "ray"), capture_output=True, text=True,
                          timeout=600)
    local_out, local = here
    assert done.returncode == local.returncode == 1
    assert done.stdout == local.stdout  # the same rows, in input order
    errors = lambda text: [line for line in text.splitlines() if line.startswith(("error", "warning"))]  # noqa: E731
    assert errors(done.stderr) == errors(local.stderr) and errors(done.stderr)
    assert done.stderr.splitlines()[-1] == local.stderr.splitlines()[-1].replace(str(local_out), str(out))
    records, maps = state(out)
    expected_records, expected_maps = state(local_out)
    assert records == expected_records
    for name, heatmap in maps.items():
        np.testing.assert_allclose(heatmap, expected_maps[name], atol=1e-5)


def test_a_killed_worker_is_replaced_and_every_image_listed_once(folder, tiny_model, here, tmp_path):
    out = tmp_path / "out"
    marker, env = marked()
    process = subprocess.Popen(explain(folder, out, tiny_model, "--engine", "ray", "--batch-size", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    killed = None
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        lines = (out / output.MANIFEST).read_text().count("\n") if (out / output.MANIFEST).exists() else 0
        workers = own_workers(marker)
        if lines >= 2 and workers:
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=600)
    assert killed, "the run ended before a worker could be killed"
    assert process.returncode == 1, stderr  # the broken file, as before: nothing else failed
    records, _ = state(out)
    same_records(records, state(here[0])[0])  # every image exactly once, in order


def test_evaluate_on_ray_equals_evaluate_here(folder, tiny_model, tmp_path):
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        command = [sys.executable, "-m", "explain_cli", "evaluate", str(folder / "part1"), "--model", str(tiny_model),
                   "--methods", "gradcam,random", "--steps", "4", "--sanity", "--sanity-stages", "2", "-o", str(out),
                   "--engine", engine]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        outputs[engine] = (done.stdout, output.read_manifest(out, "evaluation.jsonl"),
                           output.read_manifest(out, "sanity.jsonl"), sorted(p.name for p in out.glob("*.png")))
    here, ray = outputs["local"], outputs["ray"]
    assert ray[0] == here[0] and ray[3] == here[3]  # the same summary on stdout, the same figures
    for ours, theirs in ((ray[1], here[1]), (ray[2], here[2])):
        assert [{k: v for k, v in r.items() if not isinstance(v, float)} for r in ours] == [
            {k: v for k, v in r.items() if not isinstance(v, float)} for r in theirs]
        for a, b in zip(ours, theirs):
            assert all(a[k] == pytest.approx(b[k], abs=1e-5) for k, v in b.items() if isinstance(v, float))


def test_without_ray_the_engine_is_a_one_line_error(folder, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    result = run("gradcam", folder, "--model", tiny_model, "-o", tmp_path / "out", "--engine", "ray")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "error: --engine ray needs Ray: pip install 'explain-cli[ray]'"


def test_interrupting_the_driver_stops_the_cluster_work(folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    marker, env = marked()
    process = subprocess.Popen(explain(folder, out, tiny_model, "--engine", "ray", "--batch-size", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    workers: list[int] = []
    lines = 0
    while not (workers and lines) and process.poll() is None and time.monotonic() < deadline:
        workers = own_workers(marker) or workers
        lines = (out / output.MANIFEST).read_text().count("\n") if (out / output.MANIFEST).exists() else 0
        time.sleep(0.05)
    assert workers and lines, "the run ended before its worker had done anything"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted (SIGINT)" in stderr, stderr
    deadline = time.monotonic() + 30
    while own_workers(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert own_workers(marker) == [] and not any(Path(f"/proc/{pid}").exists() for pid in workers)  # none left
    records = output.read_manifest(out)
    assert len({r["image"] for r in records}) == len(records) // 2  # whole images only, none twice


def test_detect_and_its_evaluation_on_ray_equal_them_here(detector_model, tmp_path):
    """explain detect (with true boxes) and explain evaluate on a detector: the same rows, files, manifest lines,
    precision, recall and mAP from Ray's workers as from a run here."""
    from tests.synthetic_detector import make_scene

    rng = np.random.default_rng(9)
    rows = ["image,x0,y0,x1,y1,class"]
    for i in range(5):
        scene = make_scene(rng)
        Image.fromarray(scene.image).save(tmp_path / f"s{i}.png")
        rows += [f"{tmp_path / f's{i}.png'},{left},{top},{right},{bottom},{colour}"
                 for colour, (top, left, bottom, right) in scene.boxes]
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    scenes = sorted(tmp_path.glob("s*.png"))

    def explain_detector(*args) -> Any:
        """A run here in this process; on Ray, in its own (the driver's Ray session ends with it)."""
        if "ray" not in args:
            done = run(*args)
            assert done.exit_code == 0, done.output
            return done
        done = subprocess.run([sys.executable, "-m", "explain_cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    outputs = {}
    for engine in ("local", "ray"):
        out, common = tmp_path / engine, ("--model", detector_model, "--engine", engine)
        outputs[engine, "detect"] = explain_detector("detect", *scenes, "--truth", tmp_path / "truth.csv",
                                                     "--batch-size", 2, "-o", out, *common)
        outputs[engine, "evaluate"] = explain_detector("evaluate", *scenes, "--methods", "gradcam,random", "--steps", 4,
                                                       "--sanity", "--sanity-stages", 2, "-o", out / "evaluated", *common)
        outputs[engine] = (output.read_manifest(out), output.read_manifest(out / "evaluated", "evaluation.jsonl"),
                           sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")),
                           output.read_manifest(out / "evaluated", "sanity.jsonl"))
    for command in ("detect", "evaluate"):
        assert outputs["ray", command].stdout == outputs["local", command].stdout
    summaries = {engine: [line.split("; ")[-1] for line in outputs[engine, "detect"].stderr.splitlines()
                          if "mAP@0.5" in line] for engine in ("local", "ray")}
    assert summaries["ray"] == summaries["local"]
    assert summaries["local"][0].startswith("detections at IoU 0.5: precision")
    here, ray = outputs["local"], outputs["ray"]
    assert len(here[0]) >= 10 and ray[2] == here[2]  # every detection's overlay and each image's boxes
    same_records(ray[0], here[0])
    same_records(ray[1], here[1])
    assert len(here[3]) == 2 * len(here[1]) and {r["stage"] for r in here[3]} == {1, 2}  # --sanity on the workers
    same_records(ray[3], here[3])
