"""Pictures of any number of channels: what a model of 1, 2, 4 or N input channels is fed, and the RGB picture its
maps are drawn on.

A picture decodes to RGB for drawing. Where it holds more than its RGB (an alpha channel, CMYK's four, an array or a
TIFF of N bands), those planes are kept as they are, and a model whose input has that many channels is fed them:
nothing is silently made RGB, and a picture with too few channels for the model is a one-line error naming both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from explain_cli.inputs.fitting import letterboxed

ARRAY_SUFFIXES = (".npy",)


def planes_of(image: Image.Image) -> np.ndarray | None:
    """The channels a decoded picture holds beyond RGB, as they are (h, w, C) uint8: RGBA (a palette's transparency
    included), grey with alpha (2), CMYK (4); None for a picture that is RGB or grey."""
    if image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    if image.mode in ("LA", "CMYK"):
        return np.asarray(image)
    return None


def read_array(path: Path, max_pixels: int) -> np.ndarray:
    """A .npy file's array, or a TIFF's bands (tifffile: any count, any dtype), (h, w[, C]) as stored; ValueError for
    one larger than `max_pixels` values, told from its header before anything is read."""
    if path.suffix.lower() in ARRAY_SUFFIXES:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        _check(array.shape, max_pixels)
        return np.asarray(array)
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        _check(tiff.series[0].shape, max_pixels)
        array = np.asarray(tiff.series[0].asarray())
    if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16:  # bands first (C, h, w)
        array = np.moveaxis(array, 0, -1)
    return array


def _check(shape: tuple[int, ...], max_pixels: int) -> None:
    if int(np.prod(shape[:2] if len(shape) < 3 or shape[-1] <= 16 else shape[-2:])) > max_pixels:
        raise ValueError(f"{'×'.join(map(str, shape))} is over --max-pixels {max_pixels:,}")


def display(planes: np.ndarray, chosen: tuple[int, ...] | None = None) -> np.ndarray:
    """The RGB picture maps are drawn on: the `chosen` channels (three as red, green and blue, or one as grey), by
    default the first three, or the first as grey; ValueError for a channel the picture does not have."""
    if chosen is not None:
        if max(chosen) >= planes.shape[-1]:
            raise ValueError(f"--display-channels {','.join(map(str, chosen))}: the picture has channels 0 to "
                             f"{planes.shape[-1] - 1}")
        picked = np.ascontiguousarray(planes[..., list(chosen)])
        return picked if len(chosen) == 3 else np.repeat(picked, 3, axis=-1)
    if planes.shape[-1] >= 3:
        return np.ascontiguousarray(planes[..., :3])
    return np.repeat(planes[..., :1], 3, axis=-1)


def displayed(shown: str, planes: np.ndarray, chosen: tuple[int, ...]) -> np.ndarray:
    """`display` of the chosen channels; BadInput naming the picture where it has no such channel."""
    from explain_cli.errors import BadInput

    try:
        return display(planes, chosen)
    except ValueError as error:
        raise BadInput(shown, str(error)) from None


def fitted_planes(planes: np.ndarray, width: int, height: int, resize: str = "stretch") -> np.ndarray:
    """Each channel resized (bilinear) to the model's input on its own, stretched or letterboxed on grey 114."""
    if planes.shape[:2] == (height, width):
        return planes
    bands = []
    for c in range(planes.shape[-1]):
        band = Image.fromarray(np.ascontiguousarray(planes[..., c]), mode="L")
        bands.append(np.asarray(letterboxed(band, width, height) if resize == "letterbox" else
                                band.resize((width, height), Image.Resampling.BILINEAR)))
    return np.stack(bands, axis=-1)


def mismatch(held: int, wanted: int) -> str:
    """Why a picture of `held` channels cannot feed a model of `wanted`."""
    kinds = {1: "grey", 2: "grey and alpha", 3: "RGB", 4: "RGBA or CMYK"}
    what = kinds.get(held, f"{held} bands")
    return (f"has {held} channel{'s' * (held != 1)} ({what}); the model takes {wanted}: give a picture, .npy or TIFF "
            f"of {wanted} channels")
