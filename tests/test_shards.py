"""--shard I/N: every input in exactly one shard, stably; shards writing into one folder at once."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.inputs import sources as inputs
from explain_cli.io import files as output
from explain_cli.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def photos(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(len(names))
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("value, message", [
    ("3/3", "I must be below N (shards are numbered 0 to 2)"), ("0/0", "N must be at least 1"),
    ("two/4", "is not I/N (for example 0/4)"), ("1/-2", "is not I/N"),
])
def test_bad_shards_are_usage_errors(value, message, tmp_path):
    result = run("predict", tmp_path, "--shard", value)
    assert result.exit_code == 2 and message in result.stderr


def test_shards_cover_every_input_once_and_new_files_move_no_old_one(tmp_path):
    folder = photos(tmp_path / "in", [f"sub{i % 3}/img{i:03d}.png" for i in range(40)])
    found = inputs.discover([str(folder)], io.StringIO())
    shards = [inputs.Shard(i, 3) for i in range(3)]
    owners = {s.relative: [shard.index for shard in shards if shard.takes(s)] for s in found}
    assert all(len(owner) == 1 for owner in owners.values()) and len(owners) == 40
    assert {owner[0] for owner in owners.values()} == {0, 1, 2}  # all shards get work
    for name, (owner,) in owners.items():  # the hash is SHA-1 of the relative path: the same everywhere
        assert owner == int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") % 3
    photos(folder, [f"new/extra{i}.png" for i in range(10)])
    again = inputs.discover([str(folder)], io.StringIO())
    assert {s.relative: [sh.index for sh in shards if sh.takes(s)] for s in again if s.relative in owners} == owners


def test_two_shards_at_once_into_one_folder_equal_one_run(tiny_model, tmp_path):
    folder = photos(tmp_path / "in", [f"img{i:02d}.png" for i in range(12)])
    whole, out = tmp_path / "whole", tmp_path / "shared"
    assert run("gradcam", folder, "--model", tiny_model, "-o", whole, "--top-k", "2").exit_code == 0
    command = [sys.executable, "-m", "explain_cli", "gradcam", str(folder), "--model", str(tiny_model), "-o", str(out),
               "--top-k", "2"]
    shards = [subprocess.Popen(command + ["--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for i in range(2)]
    for shard in shards:
        _, stderr = shard.communicate(timeout=300)
        assert shard.returncode == 0, stderr
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]
    key = lambda r: (r["image"], r["class_index"], r["overlay"])  # noqa: E731
    assert sorted(map(key, output.read_records(out))) == sorted(map(key, output.read_manifest(whole)))
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")} == {
        p.relative_to(whole).as_posix() for p in whole.rglob("*.jpg")}
    resumed = run("gradcam", folder, "--model", tiny_model, "-o", out, "--top-k", "2", "--skip-existing")
    assert "12 skipped (already explained)" in resumed.stderr  # every shard's manifest is read
    assert run("report", out).exit_code == 0 and "img00.png" in (out / "report.html").read_text()
