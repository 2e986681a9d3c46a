"""Decompression bombs in containers: an image whose header says one size and whose contents decode to another.

Each file is crafted here: a PNG header claiming far more pixels than it holds data for, wrapped where a header
does not vouch for it (an Apple icon, a Windows icon), and a TIFF whose second page is such a claim. Decoding them
runs in a child process with its address space capped, so that if the guard failed, the child would run out of
memory instead of the machine.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.cli.main import cli

GIANT = 300_000  # a side: 9e10 pixels, 360 GB as RGBA
ADDRESS_SPACE = 3 << 30  # the child's cap: enough for Python, numpy and Pillow, not for one giant image


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width × height (RGBA, 8 bits) and whose data is a few compressed bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def icns_with(png: bytes) -> bytes:
    """An Apple icon whose one entry is 'ic08' (256 × 256, by the format's table) holding `png`."""
    entry = b"ic08" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def ico_with(png: bytes, side: int = 256) -> bytes:
    """A Windows icon whose one entry says side × side (256 is 0 in its byte fields) and holds `png`."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", side % 256, side % 256, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def tiff_whose_second_page_claims(width: int, height: int) -> bytes:
    """A two-page TIFF: a real 8 × 8 first page, and a second page whose width and length tags are rewritten."""
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="TIFF", save_all=True,
                                                  append_images=[Image.new("RGB", (9, 9))])
    data = bytearray(buffer.getvalue())
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * count)[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        at = second + 2 + 12 * i
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in (256, 257):  # ImageWidth, ImageLength: as LONG values
            struct.pack_into("<HHII", data, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


BOMBS = {
    "giant.icns": lambda: icns_with(png_claiming(GIANT, GIANT)),
    "giant.ico": lambda: ico_with(png_claiming(GIANT, GIANT)),
    "giant.png": lambda: png_claiming(GIANT, GIANT),
}

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from pathlib import Path, PurePosixPath
from explain_cli.inputs import sources as inputs
from explain_cli.errors import BadInput
results = {{}}
for path in sys.argv[1:]:
    try:
        picture = inputs.decode(inputs.Source(Path(path), path, PurePosixPath("x")), max_pixels=1_000_000)
        results[path] = list(picture.rgb.shape)
    except BadInput as error:
        results[path] = str(error)
# this process's own peak (getrusage's ru_maxrss would count the parent's memory at fork)
results["peak_kib"] = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps(results))
"""


@pytest.fixture
def bombs(tmp_path) -> dict[str, Path]:
    made = {}
    for name, make in BOMBS.items():
        made[name] = tmp_path / name
        made[name].write_bytes(make())
    made["two-pages.tif"] = tmp_path / "two-pages.tif"
    made["two-pages.tif"].write_bytes(tiff_whose_second_page_claims(GIANT, GIANT))
    return made


def test_every_container_fails_one_line_within_a_small_multiple_of_the_limit(bombs):
    done = subprocess.run([sys.executable, "-c", CHILD.format(cap=ADDRESS_SPACE), *map(str, bombs.values())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    pixels = f"{GIANT * GIANT:,}"
    for name in ("giant.icns", "giant.ico", "giant.png"):
        assert results[str(bombs[name])] == (
            f"{bombs[name]}: holds an image of {pixels} pixels, over --max-pixels 1,000,000"), name
    assert results[str(bombs["two-pages.tif"])] == [8, 8, 3]  # the first page, as for any animation or stack
    assert results["peak_kib"] < 400 * 1024  # nothing near even one allowed image's worth was ever allocated


def test_a_container_whose_image_is_larger_than_its_header_but_within_twice_the_limit_is_refused_after(tmp_path):
    """Pillow lets an embedded image through up to twice its limit; explain refuses what it decoded above once."""
    icon = Image.new("RGBA", (40, 30), (10, 200, 10, 255))
    buffer = __import__("io").BytesIO()
    icon.save(buffer, format="PNG")
    path = tmp_path / "bigger.ico"
    path.write_bytes(ico_with(buffer.getvalue(), side=16))  # the directory says 16 × 16; the PNG is 40 × 30
    from pathlib import PurePosixPath

    from explain_cli.inputs import sources as inputs
    from explain_cli.errors import BadInput

    source = inputs.Source(path, "bigger.ico", PurePosixPath("b"))
    with pytest.raises(BadInput) as caught, pytest.warns(Image.DecompressionBombWarning):
        inputs.decode(source, max_pixels=1000)
    assert str(caught.value) == "bigger.ico: 40x30 is 1,200 pixels, over --max-pixels 1,000"
    assert inputs.decode(source, max_pixels=1200).rgb.shape == (30, 40, 3)


def test_a_bomb_fails_alone_and_the_batch_goes_on(bombs, tiny_model, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(good)
    paths = [bombs["giant.icns"], good, bombs["giant.ico"], bombs["two-pages.tif"]]
    result = CliRunner().invoke(cli, ["predict", *map(str, paths), "--model", str(tiny_model), "--top", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(good), str(bombs["two-pages.tif"])]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bombs[name]}: holds an image of {GIANT * GIANT:,} pixels, over --max-pixels 120,000,000"
                      for name in ("giant.icns", "giant.ico")]


def test_pillows_own_limit_is_the_users_before_during_other_work_and_after():
    body = """
from PIL import Image
Image.MAX_IMAGE_PIXELS = 12345
import explain_cli, explain_cli.cli.main, explain_cli.inputs.sources, explain_cli.io.report
assert Image.MAX_IMAGE_PIXELS == 12345, Image.MAX_IMAGE_PIXELS
from pathlib import Path, PurePosixPath
import tempfile
path = Path(tempfile.mkdtemp()) / "x.png"
Image.new("RGB", (200, 100)).save(path)
from explain_cli.inputs import sources as inputs
assert inputs.decode(inputs.Source(path, "x", PurePosixPath("x"))).rgb.shape == (100, 200, 3)
assert Image.MAX_IMAGE_PIXELS == 12345, Image.MAX_IMAGE_PIXELS
"""
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
