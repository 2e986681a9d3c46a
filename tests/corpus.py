"""A folder of inputs a user did not curate: good images of every awkward kind and 50+ bad files.

`build(root)` returns (good, bad): the paths that must be explained and those that must each get
exactly one error line. Unknown extensions are also planted; they must be skipped silently.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width×height: a decompression bomb's front."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)  # the first rows of black; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build(root: Path) -> tuple[list[Path], list[Path]]:
    root.mkdir(parents=True, exist_ok=True)
    good: list[Path] = []
    bad: list[Path] = []

    def put(name: str, data: bytes, into: list[Path]) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        into.append(path)

    photo = _photo()
    jpeg, png = encoded(photo, "JPEG", quality=90), encoded(photo, "PNG")

    # Good, awkward: every one must be explained.
    put("plain.jpg", jpeg, good)
    put("with space and ünïcödé.png", png, good)
    put("x" * 230 + ".jpg", jpeg, good)  # output names must be shortened
    put("tiny 1x1.png", encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), good)
    put("wide 10000x1.png", encoded(Image.new("RGB", (10000, 1), (10, 200, 10)), "PNG"), good)
    put("tall 1x3000.png", encoded(Image.new("RGB", (1, 3000), (10, 10, 200)), "PNG"), good)
    grey16 = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21)  # mode I;16
    put("grey16.png", encoded(grey16, "PNG"), good)
    put("grey32.tif", encoded(Image.fromarray(np.linspace(-5, 9, 48 * 64, dtype=np.float32).reshape(48, 64)),
                              "TIFF"), good)
    put("cmyk.jpg", encoded(photo.convert("CMYK"), "JPEG"), good)
    put("rgba.png", encoded(photo.convert("RGBA"), "PNG"), good)
    put("la.png", encoded(photo.convert("LA"), "PNG"), good)
    put("palette.gif", encoded(photo.convert("P"), "GIF", transparency=0), good)
    frames = [_photo(seed=i).convert("P") for i in range(3)]
    put("animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), good)
    put("pages.tiff", encoded(_photo(seed=4), "TIFF", save_all=True, append_images=[_photo(seed=5)]), good)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", encoded(photo, "JPEG", exif=exif), good)
    put("image.webp", encoded(photo, "WEBP"), good)
    put("photo.bmp", encoded(photo, "BMP"), good)
    put("dir.jpg/inside.png", png, good)  # a folder named like an image is walked like any folder
    raw_name = os.fsdecode(b"caf\xe9-latin1.jpg")  # not UTF-8: Linux allows any bytes
    put(raw_name, jpeg, good)

    # Skipped silently: not image extensions.
    (root / "notes.txt").write_text("hello")
    (root / "data.csv").write_text("a,b\n")

    # Bad: each must give exactly one error line.
    for ext in ("jpg", "png", "gif", "webp", "tif"):
        put(f"empty.{ext}", b"", bad)
    for i, fraction in enumerate(np.linspace(0.05, 0.8, 10)):
        put(f"truncated-{i}.jpg", jpeg[: int(len(jpeg) * fraction)], bad)
        put(f"truncated-{i}.png", png[: int(len(png) * fraction)], bad)
    rng = np.random.default_rng(11)
    for i, ext in enumerate(("jpg", "png", "gif", "bmp", "tiff", "webp", "jpeg", "jpg", "png", "gif")):
        put(f"random-{i}.{ext}", rng.integers(0, 256, 1000 + 37 * i, dtype=np.uint8).tobytes(), bad)
    for i, ext in enumerate(("jpg", "png", "gif", "tif", "bmp")):
        put(f"text-{i}.{ext}", f"this is text number {i}, not pixels\n".encode() * 20, bad)
    for i, (width, height) in enumerate(((100_000, 100_000), (65_535, 65_535), (1_000_000, 500))):
        put(f"bomb-{i}.png", png_header_only(width, height), bad)
    tiff = encoded(photo, "TIFF")
    put("truncated.tif", tiff[: len(tiff) // 2], bad)  # Pillow also warns on this one: the CLI stays quiet
    broken_crc = bytearray(png)
    broken_crc[29] ^= 0xFF  # inside IHDR's CRC
    put("bad-crc.png", bytes(broken_crc), bad)
    for i, (position, value) in enumerate(((0, 0x00), (1, 0x00), (0, 0x89))):  # break the JPEG start marker
        flipped = bytearray(jpeg)
        flipped[position] = value
        put(f"flipped-{i}.jpg", bytes(flipped), bad)
    for i in range(2):
        fifo = root / f"pipe-{i}.jpg"
        os.mkfifo(fifo)  # never written to: reading it would block for ever
        bad.append(fifo)
    (root / "device.jpg").symlink_to("/dev/zero")
    bad.append(root / "device.jpg")
    (root / "loop.jpg").symlink_to("loop.jpg")
    bad.append(root / "loop.jpg")
    (root / "dangling.png").symlink_to(root / "gone.png")
    bad.append(root / "dangling.png")
    return good, bad
