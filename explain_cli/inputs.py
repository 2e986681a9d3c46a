"""Which files a run reads and how they become pixels.

Arguments are files, folders (walked recursively, image extensions only, sorted) or `-` (paths on
stdin, one a line). Each found file gets the relative name its outputs mirror. Decoding is Pillow's:
EXIF orientation applied, any mode made RGB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explain_cli.errors import BadInput

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
# Transparent pixels are shown on mid grey: neither black nor white pretends to be the background.
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Source:
    """An input file: where it is, how to show it, and the relative name its outputs take."""

    path: Path
    shown: str  # as the user wrote it, or as found under the folder they gave
    stem: PurePosixPath  # output name without extension: "sub/img" for folder/sub/img.jpg


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


def decode(source: Source) -> np.ndarray:
    """The image as an (h, w, 3) uint8 RGB array, upright; BadInput naming the problem otherwise."""
    path = source.path
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(_to_rgb(image))
    except FileNotFoundError:
        raise BadInput(source.shown, "no such file") from None
    except IsADirectoryError:
        raise BadInput(source.shown, "is a directory") from None
    except PermissionError:
        raise BadInput(source.shown, "permission denied") from None
    except UnidentifiedImageError:
        raise BadInput(source.shown, "not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as error:
        raise BadInput(source.shown, f"too many pixels: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
        raise BadInput(source.shown, f"cannot decode: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def model_input(rgb: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
    """The image resized (bilinear) to the model's input, uint8 (height, width, channels)."""
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image)
