"""Volumes as arrays of their own voxels: NIfTI (nibabel), a DICOM series (pydicom), a multi-page TIFF, a .npy.

Each is read as (depth, height, width, channels) float32 in its file's own voxel order (what `nibabel.load(f).get_fdata()`
gives for a NIfTI, slices in the order of their positions for DICOM, pages for a TIFF), with the affine that maps a
voxel's index to the world (RAS millimetres, as NIfTI stores it; the identity where the file says none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from explain_cli import errors
from explain_cli.errors import BadInput, first_line

EXTRA = errors.install("volumes")


def read_volume(path: Path, shown: str, max_voxels: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(voxels (D, H, W, C) float32, affine (4, 4), what it was read as); BadInput naming the problem otherwise."""
    name = path.name.lower()
    try:
        if path.is_dir():
            array, affine, how = _dicom_series(path, shown, max_voxels)
        elif name.endswith((".nii", ".nii.gz")):
            array, affine, how = _nifti(path, max_voxels)
        elif name.endswith(".dcm"):
            array, affine, how = _dicom_series(path.parent, shown, max_voxels)
        elif name.endswith((".tif", ".tiff")):
            array, affine, how = _tiff(path, max_voxels)
        elif name.endswith(".npy"):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            _check(array.shape, max_voxels)
            array, affine, how = np.asarray(array), np.eye(4), "an array"
        else:
            raise BadInput(shown, "not a volume: give a NIfTI (.nii, .nii.gz), a DICOM series folder, a multi-page "
                           "TIFF or a .npy array")
    except BadInput:
        raise
    except ModuleNotFoundError as missing:
        raise BadInput(shown, f"reading it needs {missing.name}: {EXTRA}") from None
    except MemoryError:
        raise BadInput(shown, "not enough memory to read it") from None
    except Exception as error:  # each reader's own errors for a file it cannot read
        raise BadInput(shown, f"cannot read it as a volume: {type(error).__name__}: {first_line(error)}") from None
    return _with_channels(shown, array), np.asarray(affine, np.float64), how


def _check(shape: tuple[int, ...], max_voxels: int) -> None:
    if int(np.prod(shape[:3])) > max_voxels:
        raise ValueError(f"{'×'.join(map(str, shape))} is over --max-pixels {max_voxels:,} voxels")


def _with_channels(shown: str, array: np.ndarray) -> np.ndarray:
    """(D, H, W) or (D, H, W, C) finite numbers as (D, H, W, C) float32."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or 0 in array.shape:
        raise BadInput(shown, f"a volume is (depth, height, width[, channels]), not {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.number) and np.isfinite(array).all()):
        raise BadInput(shown, "a volume holds finite numbers, and this one holds NaN or infinity")
    return np.asarray(array, np.float32)


def _nifti(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray, str]:
    import nibabel

    image: Any = nibabel.load(str(path))
    _check(tuple(image.shape), max_voxels)
    zooms = "×".join(f"{z:.3g}" for z in image.header.get_zooms()[:3])
    array = np.asarray(image.dataobj, np.float32)  # the scaling the header states (slope, intercept) applied
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI's time axis of one, before its components
        array = array[:, :, :, 0]
    return array, np.asarray(image.affine), f"NIfTI, voxels {zooms} mm"


def _tiff(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray, str]:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        _check(tiff.series[0].shape, max_voxels)
        array = np.asarray(tiff.series[0].asarray())
    if array.ndim == 2:
        raise ValueError("one page: a volume's TIFF holds a page per slice")
    return array, np.eye(4), f"a TIFF of {array.shape[0]} pages"


def _dicom_series(folder: Path, shown: str, max_voxels: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A folder's DICOM slices (files ending .dcm, or every file that reads as DICOM) stacked in the order of their
    positions along the slices' normal; the affine from their orientation, spacing and positions (LPS to RAS)."""
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(file))
        except pydicom.errors.InvalidDicomError:
            continue  # a folder's other files (a README, a DICOMDIR's index) are not slices
    slices = [s for s in slices if "PixelData" in s]
    if not slices:
        raise BadInput(shown, "no DICOM slices in this folder")
    rows, columns = int(slices[0].Rows), int(slices[0].Columns)
    _check((len(slices), rows, columns), max_voxels)
    orientation = np.asarray(getattr(slices[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), np.float64)
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    position = lambda s: np.asarray(getattr(s, "ImagePositionPatient", [0, 0, float(getattr(s, "InstanceNumber", 0))]),  # noqa: E731
                                    np.float64)
    slices.sort(key=lambda s: float(position(s) @ normal))
    if any((int(s.Rows), int(s.Columns)) != (rows, columns) for s in slices):
        raise BadInput(shown, "its DICOM slices are not all of one size")
    array = np.stack([s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1) or 1)
                      + float(getattr(s, "RescaleIntercept", 0) or 0) for s in slices])
    row_spacing, column_spacing = (float(v) for v in getattr(slices[0], "PixelSpacing", [1, 1]))
    first = position(slices[0])
    step = (position(slices[-1]) - first) / (len(slices) - 1) if len(slices) > 1 else \
        normal * float(getattr(slices[0], "SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = step, along_column * row_spacing, along_row * column_spacing, first
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, f"a DICOM series of {len(slices)} slices"


def shown_volume(voxels: np.ndarray) -> np.ndarray:
    """What a volume looks like, to draw its maps on: its first channel (its first three, for three or more) windowed
    between its 1st and 99th percentiles (read from every 7th value), (D, H, W, 1 or 3) uint8."""
    seen = voxels[..., :3] if voxels.shape[-1] >= 3 else voxels[..., :1]
    low, high = np.percentile(seen.ravel()[::7], [1, 99])  # every 7th value: the same window, 1/7 of the sorting
    if high <= low:
        return np.zeros(seen.shape, np.uint8)
    scaled = np.subtract(seen, low, dtype=np.float32)  # one array, changed in place: a volume is large
    scaled *= 255.0 / (high - low)
    scaled += 0.5  # rounded half up by the truncation below
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
