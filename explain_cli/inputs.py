"""Which files a run reads and how they become pixels.

Arguments are files, folders (walked recursively, image extensions only, sorted) or `-` (paths on
stdin, one a line). Each found file gets the relative name its outputs mirror. Decoding is Pillow's:
EXIF orientation applied, any mode made RGB.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explain_cli.errors import BadInput

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
# Above this many pixels an image is refused (`--max-pixels`): 120 MP holds the largest camera photos (~100 MP)
# while a "decompression bomb" of gigapixels fails at once.
DEFAULT_MAX_PIXELS = 120_000_000
# Transparent pixels are shown on mid grey: neither black nor white pretends to be the background.
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Source:
    """An input file: where it is, how to show it, and the relative name its outputs take."""

    path: Path
    shown: str  # as the user wrote it, or as found under the folder they gave
    stem: PurePosixPath  # output name without extension: "sub/img" for folder/sub/img.jpg

    @property
    def relative(self) -> str:
        """The path relative to the folder it was found in (its name when given directly)."""
        return self.stem.with_name(self.path.name).as_posix()


@dataclass(frozen=True)
class Shard:
    """--shard I/N: the inputs whose relative path hashes to I of N."""

    index: int
    count: int

    def takes(self, source: Source) -> bool:
        return shard_of(source.relative, self.count) == self.index

    def __str__(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def shard_of(name: str, count: int) -> int:
    """A stable hash of a relative path, modulo `count`: SHA-1, the same on every machine and Python, and a
    file's shard never depends on which other files exist."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """"I/N" with 0 <= I < N; ValueError saying what is wrong otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not I/N (for example 0/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"{text!r}: N must be at least 1")
    if index >= count:
        raise ValueError(f"{text!r}: I must be below N (shards are numbered 0 to {count - 1})")
    return Shard(index, count)


def discover(arguments: Iterable[str], stdin: TextIO, skip_dir: Path | None = None) -> list[Source]:
    """The files a run reads, in order. Missing arguments become Sources too: they fail when read."""
    sources: list[Source] = []
    for argument in arguments:
        if argument == "-":
            sources.extend(_file_source(line.rstrip("\r\n")) for line in stdin if line.strip())
        elif Path(argument).is_dir():
            sources.extend(_walk(Path(argument), skip_dir))
        else:
            sources.append(_file_source(argument))
    return _unique_stems(sources)


def _file_source(argument: str) -> Source:
    path = Path(argument)
    return Source(path=path, shown=argument, stem=PurePosixPath(path.stem or path.name))


def _walk(folder: Path, skip_dir: Path | None) -> Iterable[Source]:
    skip = skip_dir.resolve() if skip_dir is not None else None
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if skip is None or (here / d).resolve() != skip)
        for name in sorted(files):
            path = here / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                relative = path.relative_to(folder)
                yield Source(path=path, shown=str(path), stem=PurePosixPath(relative.with_suffix("").as_posix()))


def _unique_stems(sources: list[Source]) -> list[Source]:
    """Give each source its own output name: a repeated one gets "-2", "-3"... (two cat.jpg named directly)."""
    seen: set[PurePosixPath] = set()
    unique: list[Source] = []
    for source in sources:
        stem, n = source.stem, 1
        while stem in seen:
            n += 1
            stem = source.stem.with_name(f"{source.stem.name}-{n}")
        seen.add(stem)
        unique.append(source if stem == source.stem else Source(source.path, source.shown, stem))
    return unique


@dataclass(frozen=True)
class Picture:
    """A decoded image and what was done to get it (said with --verbose)."""

    rgb: np.ndarray  # (h, w, 3) uint8, upright
    notes: tuple[str, ...] = ()


class _PixelLimit:
    """Pillow's decompression-bomb guard, set to --max-pixels while explain decodes and put back as it was after.

    Pillow checks the size of every image it is about to allocate against Image.MAX_IMAGE_PIXELS: the file's
    header, and the images a container embeds (an ICNS or ICO's PNG, whose header may claim 256 × 256 while the PNG
    inside says 500,000 × 500,000). It warns above the limit and raises DecompressionBombError above twice it, so
    no decode allocates more than 2 × --max-pixels; explain refuses anything above 1 ×, by the header and by what
    was decoded. The setting is the module's, shared by every thread: decodes running at once hold it at the
    smallest limit among them, and the user's own value comes back when the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[int] = []
        self._saved: float | None = None

    @contextlib.contextmanager
    def __call__(self, max_pixels: int) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._saved = Image.MAX_IMAGE_PIXELS
            self._active.append(max_pixels)
            Image.MAX_IMAGE_PIXELS = min(self._active)
        try:
            yield
        finally:
            with self._lock:
                self._active.remove(max_pixels)
                Image.MAX_IMAGE_PIXELS = min(self._active) if self._active else self._saved


pixel_limit = _PixelLimit()


def decode(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """The image as upright RGB; BadInput naming the problem otherwise. Never raises anything else.

    The file is opened without blocking (a FIFO named x.jpg must not hang the batch) and must be a
    regular file. Its pixel count is checked from the header before any pixel is decoded, and Pillow's own guard
    bounds every allocation while it decodes (`pixel_limit`), so a decompression bomb fails fast, whatever
    container it hides in.
    """
    shown = source.shown
    try:
        with pixel_limit(max_pixels), _open_regular(source) as stream, Image.open(stream) as image:
            _check_size(shown, image.size, max_pixels)
            notes = []
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                notes.append(f"{frames} frames; using the first")
            image.load()
            _check_size(shown, image.size, max_pixels)  # what was decoded: a container's image may not be its header's
            upright = ImageOps.exif_transpose(image)
            rgb, how = _to_rgb(upright)
            return Picture(np.asarray(rgb), tuple(notes + ([how] if how else [])))
    except BadInput:
        raise
    except Image.DecompressionBombError as error:
        raise BadInput(shown, f"holds an image of {_bomb_size(error)}over --max-pixels {max_pixels:,}") from None
    except UnidentifiedImageError:  # an OSError too: before the general case
        raise BadInput(shown, "not an image (Pillow cannot identify it)") from None
    except OSError as error:
        raise BadInput(shown, _os_reason(error)) from None
    except MemoryError:
        raise BadInput(shown, "not enough memory to decode it") from None
    except Exception as error:  # corrupt headers surface as ValueError, SyntaxError, struct.error, ...
        raise BadInput(shown, f"cannot decode: {type(error).__name__}: {error}") from None


def _check_size(shown: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise BadInput(shown, f"{width}x{height} is {width * height:,} pixels, over --max-pixels {max_pixels:,}")


def _bomb_size(error: Exception) -> str:
    """"N pixels, " from Pillow's DecompressionBombError (which gives no width and height), when it says."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,} pixels, " if found else ""


_NOT_REGULAR = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a named pipe"),
                (stat.S_ISCHR, "is a device"), (stat.S_ISBLK, "is a device"), (stat.S_ISSOCK, "is a socket"))


@contextlib.contextmanager
def _open_regular(source: Source) -> Iterator[BinaryIO]:
    descriptor = os.open(source.path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(descriptor)
        for test, reason in _NOT_REGULAR:
            if test(info.st_mode):
                raise BadInput(source.shown, reason)
        if info.st_size == 0:
            raise BadInput(source.shown, "empty file")
        stream = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with stream:
        yield stream


def _os_reason(error: OSError) -> str:
    reasons = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "symbolic link loop",
        errno.ENAMETOOLONG: "file name too long",
        errno.EISDIR: "is a directory",
    }
    if error.errno in reasons:
        return reasons[error.errno]
    if error.errno is None:  # Pillow's own: "image file is truncated", "broken data stream" ...
        return f"cannot decode: {error}"
    return f"cannot read: {error.strerror or error}"


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """The image as RGB, and a note when that took more than a mode conversion."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB"), "transparent pixels shown on mid grey"
    if image.mode.startswith("I;16"):
        # Pillow's own conversion clips 16-bit values at 255 (a white image): scale the full range.
        levels = np.asarray(image, dtype=np.float32) / 257.0
        return _grey(levels), "16-bit grey scaled to 8 bits"
    if image.mode in ("I", "F"):
        # 32-bit grey has no standard white level: stretch its own range.
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        span = high - low if high > low else 1.0
        return _grey(np.nan_to_num((values - low) / span * 255.0)), "32-bit grey stretched to its range"
    return image.convert("RGB"), ""


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def model_input(rgb: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
    """The image resized (bilinear) to the model's input, uint8 (height, width, channels)."""
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image)
