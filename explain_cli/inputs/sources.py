"""How a run's inputs become pixels (which files it reads: inputs/finding.py, re-exported here).

Decoding is Pillow's: EXIF orientation applied, any mode made RGB.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Hashable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explain_cli.errors import BadInput, first_line
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS, Shard, parse_shard, shard_of  # noqa: F401 (re-exported)
from explain_cli.inputs import channels as channel_planes
from explain_cli.inputs.fitting import RESIZES as RESIZES, Canvas as Canvas, letterboxed
from explain_cli.inputs.finding import (IMAGE_EXTENSIONS as IMAGE_EXTENSIONS, Source as Source, _unique_stems, _walk,
                                        discover as discover, file_source as file_source)  # noqa: F401

# Transparent pixels are shown on mid grey: neither black nor white pretends to be the background.
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Picture:
    """A decoded image and what was done to get it (said with --verbose)."""

    rgb: np.ndarray  # (h, w, 3) uint8, upright
    notes: tuple[str, ...] = ()
    planes: np.ndarray | None = None  # (h, w, C) uint8: the channels it holds beyond RGB (inputs/channels.py)


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
    """The image as upright RGB; BadInput naming the problem otherwise. Never raises anything else."""
    return _decoded(source, max_pixels)[0]


def decode_for(source: Source, max_pixels: int, width: int, height: int, channels: int,
               resize: str = "stretch") -> tuple[Picture, np.ndarray]:
    """`decode` and `model_input` at once: the input resized from Pillow's own copy of the pixels, not from the array
    (a copy of a large photo costs as much as its resize). An array given as the model's input is taken as it stands
    (float32), and a picture of it made to draw on."""
    if source.as_input:
        return given_input(source, height, width, channels)
    picture, image = _decoded(source, max_pixels)
    photo = picture.planes is None or picture.planes.shape[-1] in (2, 4)  # grey or RGB, with alpha, or CMYK
    if channels in (1, 3) and photo:  # read as every photo is read
        return picture, model_input(picture.rgb, width, height, channels, image, resize)
    held = picture.planes.shape[-1] if picture.planes is not None else 3
    if held != channels:
        raise BadInput(source.shown, channel_planes.mismatch(held, channels))
    assert picture.planes is not None
    return picture, channel_planes.fitted_planes(picture.planes, width, height, resize)


def _decoded(source: Source, max_pixels: int) -> tuple[Picture, Image.Image | None]:
    """The picture, and the same pixels as a Pillow image where decoding made one.

    The file is opened without blocking (a FIFO named x.jpg must not hang the batch) and must be a
    regular file. Its pixel count is checked from the header before any pixel is decoded, and Pillow's own guard
    bounds every allocation while it decodes (`pixel_limit`), so a decompression bomb fails fast, whatever
    container it hides in.
    """
    shown = source.shown
    if source.pixels is not None:
        return _from_memory(source, max_pixels), None
    if source.path.suffix.lower() in channel_planes.ARRAY_SUFFIXES:
        return _from_array_file(source, max_pixels), None
    try:
        with pixel_limit(max_pixels), _open_regular(source) as stream, Image.open(stream) as image:
            _check_size(shown, image.size, max_pixels)
            notes = []
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                notes.append(f"{frames} frames; using the first")
            image.load()
            _check_size(shown, image.size, max_pixels)  # what was decoded: a container's image may not be its header's
            ImageOps.exif_transpose(image, in_place=True)  # a copy would cost as much as the decode's resize
            rgb, how = _to_rgb(image)
            return Picture(np.asarray(rgb), tuple(notes + ([how] if how else [])), channel_planes.planes_of(image)), rgb
    except BadInput:
        raise
    except UnidentifiedImageError if source.path.suffix.lower() in (".tif", ".tiff") else ():
        try:
            return _from_array_file(source, max_pixels), None  # bands Pillow cannot read: tifffile reads any
        except BadInput:
            raise BadInput(shown, "not an image (Pillow cannot identify it)") from None
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


def _from_memory(source: Source, max_pixels: int) -> Picture:
    """An image given in memory as upright RGB: a PIL image (any mode; EXIF orientation applied), or an array of
    (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) pixels: uint8, or other numbers taken as 0-255 (keras.utils.
    img_to_array's floats)."""
    given = source.pixels
    if isinstance(given, Image.Image):
        _check_size(source.shown, given.size, max_pixels)
        rgb, how = _to_rgb(ImageOps.exif_transpose(given))
        return Picture(np.asarray(rgb), (how,) if how else ())
    return _array_picture(source.shown, np.asarray(given), max_pixels)


def _from_array_file(source: Source, max_pixels: int) -> Picture:
    """A .npy file, or a TIFF of bands Pillow cannot read, as an image array."""
    try:
        array = channel_planes.read_array(source.path, max_pixels)
    except ModuleNotFoundError:
        raise BadInput(source.shown, "a TIFF of this kind needs tifffile: pip install tifffile") from None
    except Exception as error:  # numpy's and tifffile's own errors for a file they cannot read
        raise BadInput(source.shown, f"cannot read it as an array: {type(error).__name__}: {first_line(error)}") from None
    return _array_picture(source.shown, array, max_pixels)


def _array_picture(shown: str, array: np.ndarray, max_pixels: int) -> Picture:
    """An image array (h, w[, C]) as a picture: uint8, or other numbers taken as 0-255 (keras.utils.img_to_array's
    floats); 16-bit integers scaled to 8 bits. Its channels beyond RGB are kept as planes."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise BadInput(shown, f"an image array is (height, width[, channels]), not {array.shape}")
    _check_size(shown, (array.shape[1], array.shape[0]), max_pixels)
    notes = []
    if array.dtype in (np.uint16, np.int32, np.uint32) and array.max(initial=0) > 255:
        array, notes = np.rint(array / 257.0).clip(0, 255).astype(np.uint8), ["16-bit values scaled to 8 bits"]
    if array.dtype != np.uint8:
        array, note = _as_uint8(shown, array)
        notes.append(note)
    if array.ndim == 2:
        return Picture(np.repeat(array[..., None], 3, axis=-1), tuple(notes))
    if array.shape[-1] == 3:  # already RGB: used as it is (a read-only view, never changed)
        return Picture(array, tuple(notes))
    if array.shape[-1] == 4:  # RGBA as a photo shows it (transparency on grey), its four channels kept
        rgb, how = _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
        return Picture(np.asarray(rgb), tuple(notes + [how]), array)
    return Picture(channel_planes.display(array), tuple(notes + [f"{array.shape[-1]} channels"]), array)


def _as_uint8(shown: str, array: np.ndarray) -> tuple[np.ndarray, str]:
    """Numbers as 0-255 pixels (keras.utils.img_to_array's floats), rounded and clipped."""
    _check_finite(shown, array)
    return np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8), "values taken as 0-255"


def _check_finite(shown: str, array: np.ndarray) -> None:
    if not (np.issubdtype(array.dtype, np.number) and np.isfinite(array).all()):
        raise BadInput(shown, f"an image array holds finite numbers, not {array.dtype} with NaN or infinity")


# How the library reads arrays: "auto" (floats are the model's input as it stands, as model.predict takes them; uint8
# arrays are pictures), "input" (every array is the model's input) or "pixels" (every array is a picture, 0-255).
ARRAY_READINGS = ("auto", "input", "pixels")


def is_model_input(array: Any, arrays: str) -> bool:
    """Whether an array is read as the model's input as it stands, not as a picture to preprocess."""
    if isinstance(array, Image.Image) or arrays == "pixels":
        return False
    return arrays == "input" or np.issubdtype(np.asarray(array).dtype, np.floating)


def given_input(source: Source, height: int, width: int, channels: int) -> tuple[Picture, np.ndarray]:
    """An array that is the model's input as it stands: float32 of the input's own shape (never resized), and a picture
    of it to draw on (its range stretched to 0-255; its first three channels, or its one as grey)."""
    array = np.asarray(source.pixels)
    if array.ndim == 2 and channels == 1:
        array = array[..., None]
    if array.shape != (height, width, channels):
        raise BadInput(source.shown, f"an array given as the model's input is its input's shape, {height}×{width}×"
                       f"{channels}, not {'×'.join(map(str, array.shape))}; give pixels (uint8, a PIL image or a file) "
                       "to have it resized and preprocessed")
    _check_finite(source.shown, array)
    x = array.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    shown = (x - low) * (255.0 / (high - low)) if high > low else np.zeros_like(x)
    rgb = np.rint(shown[..., :3] if channels >= 3 else np.repeat(shown[..., :1], 3, axis=-1)).astype(np.uint8)
    return Picture(rgb, (f"the model's input as given, values {low:.4g} to {high:.4g}",)), x


def sources_of(images: Any, arrays: str = "auto") -> Iterator[Source]:
    """The images the library is given, one Source each, lazily (a generator is never read ahead of the batches):
    a numpy batch (n, h, w[, c]), one array or PIL image, a path to an image, a folder (walked as the command line
    walks it), or any iterable of these. In-memory images are numbered in the order given. `arrays`: how arrays are
    read (ARRAY_READINGS)."""
    counter = iter(range(1 << 62))
    for item in [images] if _is_one(images) or _is_array_batch(images) else images:
        if isinstance(item, Source):  # an example made already: a row of a model of several inputs
            yield item
        elif isinstance(item, (str, Path)):
            if Path(item).is_dir():
                yield from (s for s in _unique_stems(list(_walk(Path(item), None))) if s.grid is None)
            else:
                yield file_source(str(item))
        elif _is_array_batch(item):
            batch = np.asarray(item)
            for image in batch:
                yield memory_source(image, next(counter), arrays)
        else:
            yield memory_source(item, next(counter), arrays)


def pictures_by_key(pictures: Any) -> Callable[[Hashable], np.ndarray]:
    """Pictures a user gives to draw on (any form `sources_of` takes), decoded: each image's, by its key."""
    from explain_cli.errors import BadArgument

    decoded = {source.key: decode(source).rgb for source in sources_of(pictures, "pixels")}

    def drawn(key: Hashable) -> np.ndarray:
        if key not in decoded:
            raise BadArgument("pictures", f"no picture for image {key!r}: give one picture per image, in their order")
        return decoded[key]

    return drawn


def _is_array_batch(images: Any) -> bool:
    return hasattr(images, "__array__") and not isinstance(images, Image.Image) and len(np.shape(images)) == 4


def _is_one(images: Any) -> bool:
    return isinstance(images, (str, Path, Image.Image)) or (hasattr(images, "__array__") and len(np.shape(images)) <= 3)


def memory_source(image: Any, index: int, arrays: str = "auto") -> Source:
    if not (isinstance(image, Image.Image) or hasattr(image, "__array__")):
        raise BadInput(str(index), f"not an image: a {type(image).__name__} (give arrays, PIL images or paths)")
    return Source(path=Path(str(index)), shown=str(index), stem=PurePosixPath(str(index)), pixels=image, index=index,
                  as_input=is_model_input(image, arrays))


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
    return (image if image.mode == "RGB" else image.convert("RGB")), ""


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def model_input(rgb: np.ndarray, width: int, height: int, channels: int,
                held: Image.Image | None = None, resize: str = "stretch") -> np.ndarray:
    """The image resized (bilinear) to the model's input, uint8 (height, width, channels), stretched or letterboxed;
    from `held`, the same pixels as a Pillow image, where given."""
    if rgb.shape[:2] == (height, width) and channels == 3:
        return rgb  # already the model's size
    image = held if held is not None else Image.fromarray(np.ascontiguousarray(rgb))
    image = letterboxed(image, width, height) if resize == "letterbox" else \
        image.resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image)


def key_of(image: Hashable) -> Hashable:
    """An image's key as the library hands it out: a path as a string, an index as an int."""
    return str(image) if isinstance(image, Path) else image
