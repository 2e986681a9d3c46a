"""Inputs with a third axis: volumes (depth, height, width) and clips (frames, height, width), for a model whose input
is (batch, depth, height, width, channels).

A volume's voxels are the model's input as they stand (float32, no preprocessing), resampled (trilinearly) to the
model's sides; its maps come back on its own grid. A clip's frames are pictures: each resized as a picture is, then
preprocessed as the model's pictures are. What an input is comes from its name: a video file or a folder of pictures is
a clip; a NIfTI, a DICOM series (a folder of .dcm files), a multi-page TIFF or a .npy is a volume; an array given in
memory is a volume of values (floats) or a clip of frames (uint8).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from explain_cli.errors import BadArgument, BadInput
from explain_cli.inputs import clips, volumes
from explain_cli.inputs.finding import Source, _unique_stems, _walk, file_source

VOLUME, CLIP = "volume", "clip"


@dataclass(frozen=True)
class Grid:
    """What an input of three axes is, and once read, where it lies: a volume's affine, a clip's frames and rate."""

    kind: str  # VOLUME or CLIP
    walked: bool = False  # found in a folder (a model of pictures leaves it alone), not named
    start: int = 0  # a clip's first frame in its video
    frames: int | None = None  # a clip's frame count (None: every frame there is)
    shape: tuple[int, ...] = ()  # its own (depth, height, width), once read
    affine: np.ndarray | None = field(default=None, compare=False)  # a volume's voxel index -> world (RAS, mm)
    rate: float | None = None  # a clip's frames per second
    files: tuple[Path, ...] = ()  # a clip's frames or a volume's slices found as files, in order

    @property
    def spacing(self) -> tuple[float, ...]:
        """Millimetres per voxel along each axis: the lengths of the affine's columns (1 without an affine)."""
        return (1.0, 1.0, 1.0) if self.affine is None else tuple(float(s) for s in np.linalg.norm(
            self.affine[:3, :3], axis=0))


@dataclass(frozen=True)
class Cutting:
    """How a model of clips is fed long videos: clips of `length` frames (None: the model's depth), one every `stride`
    frames (None: one after another)."""

    length: int | None = None
    stride: int | None = None

    def windows(self, frames: int, depth: int) -> list[tuple[int, int]]:
        length = self.length or depth
        return clips.clip_windows(frames, length, self.stride or length)


def for_model(found: Sequence[Source], depth: int, cutting: Cutting = Cutting()) -> list[Source]:
    """The examples of a model of volumes or clips among the sources a run found: a video cut into its clips; pictures
    found in one folder as one clip of frames, in name order; the .dcm slices of one folder as one volume; a .npy, a
    TIFF or a NIfTI as a volume."""
    examples: list[Source] = []
    grouped: dict[tuple[Path, str], int] = {}
    for source in found:
        suffix = source.path.suffix.lower()
        if source.pixels is not None:
            examples.append(source)
        elif source.grid is not None and source.grid.kind == CLIP:
            examples.extend(_clips_of(source, depth, cutting))
        elif suffix in (".npy", ".tif", ".tiff") or (source.grid is not None and suffix != ".dcm"):
            examples.append(dataclasses.replace(source, grid=Grid(VOLUME)))
        else:  # a folder's pictures (frames) or its .dcm slices: one example, where its first was
            kind = VOLUME if suffix == ".dcm" else CLIP
            key = (source.path.parent, kind)
            if key in grouped:
                first = examples[grouped[key]]
                examples[grouped[key]] = dataclasses.replace(first, grid=dataclasses.replace(
                    first.grid, files=(*first.grid.files, source.path)))
                continue
            parent = source.stem.parent
            stem = parent if parent != PurePosixPath(".") else PurePosixPath(source.path.parent.resolve().name or kind)
            grouped[key] = len(examples)
            examples.append(Source(path=source.path.parent, shown=str(source.path.parent), stem=stem,
                                   grid=Grid(kind, files=(source.path,))))
    return _unique_stems([dataclasses.replace(s, as_input=s.grid is not None and s.grid.kind == VOLUME)
                          if s.pixels is None else s for s in examples])


def pictures_only(found: Sequence[Source]) -> list[Source]:
    """A model of pictures: the sources found, less the volumes and videos found in folders (named ones stay, to be
    refused when read)."""
    return [source for source in found if source.grid is None or not source.grid.walked]


def _clips_of(source: Source, depth: int, cutting: Cutting) -> list[Source]:
    """A video's clips, each its own example named after its frames ("walk.f16-31") where it has several."""
    try:
        frames = clips.frame_count(source.path)
    except Exception:  # an unreadable or missing video: reading it says why
        return [source]
    windows = cutting.windows(frames, depth)
    if len(windows) == 1:
        return [dataclasses.replace(source, grid=dataclasses.replace(source.grid, frames=windows[0][1]))]
    return [dataclasses.replace(source, stem=source.stem.with_name(f"{source.stem.name}.f{start}-{start + count - 1}"),
                                shown=f"{source.shown}[{start}:{start + count}]",
                                grid=dataclasses.replace(source.grid, start=start, frames=count))
            for start, count in windows]


def sources_of(images: Any, arrays: str = "auto") -> Iterator[Source]:
    """The library's inputs to a model of volumes or clips, one Source each: a path (a file, or a folder walked), an
    array (D, H, W[, C]), a batch of them (n, D, H, W, C), or a list of these. In-memory arrays are numbered in the
    order given: floats are volumes of values, uint8 clips of frames (`arrays`: "input" or "pixels" says for all)."""
    items = [images] if isinstance(images, (str, Path)) or (hasattr(images, "__array__") and np.ndim(images) < 5) \
        else images
    counter = iter(range(1 << 62))
    for item in items:
        if isinstance(item, Source):
            yield item
        elif isinstance(item, (str, Path)):  # a folder is walked: its pictures become a clip, its slices a volume
            yield from _unique_stems(list(_walk(Path(item), None))) if Path(item).is_dir() else [file_source(str(item))]
        elif hasattr(item, "__array__"):
            index = next(counter)
            values = arrays == "input" or (arrays == "auto" and np.issubdtype(np.asarray(item).dtype, np.floating))
            yield Source(path=Path(str(index)), shown=str(index), stem=PurePosixPath(str(index)), pixels=item,
                         index=index, as_input=values, grid=Grid(VOLUME if values else CLIP))
        else:
            raise BadArgument("images", f"a model of volumes or clips takes paths and arrays, not a "
                              f"{type(item).__name__}")


def decode_for(source: Source, size: tuple[int, int, int, int], max_pixels: int) -> tuple[Any, np.ndarray, Source]:
    """(the picture to draw on: a volume's windowed voxels (D, H, W, 1 or 3) or a clip's frames (T, H, W, 3) at their
    own size, the model's input at its sides, the source with its Grid read); BadInput naming the problem."""
    from explain_cli.inputs.sources import Picture, model_input

    depth, height, width, channels = size
    grid = source.grid or Grid(VOLUME if source.as_input else CLIP)
    if grid.kind == VOLUME:
        voxels, affine, how = _volume(source, max_pixels)
        if voxels.shape[-1] != channels:
            raise BadInput(source.shown, f"a volume of {voxels.shape[-1]} channels; the model takes {channels}")
        x = resample(voxels, (depth, height, width))  # values: the model's input as they stand (as_input)
        read = dataclasses.replace(grid, shape=voxels.shape[:3], affine=affine)
        notes = (how, f"{'×'.join(map(str, voxels.shape[:3]))} voxels resampled to {depth}×{height}×{width}")
        return Picture(volumes.shown_volume(voxels), notes), x, dataclasses.replace(source, grid=read)
    frames, rate = _clip(source, grid, max_pixels)
    if len(frames) != depth:
        raise BadInput(source.shown, f"a clip of {len(frames)} frames; the model takes {depth}: give --clip-length "
                       f"{depth} or a longer video")
    x = np.stack([model_input(frame, width, height, channels) for frame in frames])
    read = dataclasses.replace(grid, shape=frames.shape[:3], rate=rate, frames=len(frames))
    return Picture(frames, (f"{len(frames)} frames at {rate:g} per second",)), x, dataclasses.replace(source, grid=read)


def _volume(source: Source, max_pixels: int) -> tuple[np.ndarray, np.ndarray, str]:
    if source.pixels is not None:
        array = np.asarray(source.pixels)
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4:
            raise BadInput(source.shown, f"a volume is (depth, height, width[, channels]), not {array.shape}")
        return np.asarray(array, np.float32), np.eye(4), "an array"
    if not source.path.exists():
        raise BadInput(source.shown, "no such file or folder")
    return volumes.read_volume(source.path, source.shown, max_pixels)


def _clip(source: Source, grid: Grid, max_pixels: int) -> tuple[np.ndarray, float]:
    if source.pixels is not None:
        frames = np.asarray(source.pixels)
        if frames.ndim == 3:  # grey frames
            frames = frames[..., None]
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
            raise BadInput(source.shown, f"a clip is (frames, height, width[, 1 or 3]), not {frames.shape}")
        return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames, clips.FRAMES_RATE
    if grid.files:  # a folder's pictures, found
        return clips.read_frames(grid.files, source.shown, max_pixels), clips.FRAMES_RATE
    if not source.path.exists():
        raise BadInput(source.shown, "no such file or folder")
    return clips.read_video(source.path, source.shown, grid.start, grid.frames, max_pixels)


def resample(array: np.ndarray, sides: Sequence[int]) -> np.ndarray:
    """`array`'s first len(sides) axes resampled to `sides`, linearly along each in turn (half-pixel centres, as
    tf.image.resize and Pillow's bilinear), float32."""
    out = np.asarray(array, np.float32)
    for axis, side in enumerate(sides):
        size = out.shape[axis]
        if size == side:
            continue
        where = np.clip((np.arange(side, dtype=np.float64) + 0.5) * (size / side) - 0.5, 0, size - 1)
        below = np.floor(where).astype(np.intp)
        above = np.minimum(below + 1, size - 1)
        weight = (where - below).astype(np.float32).reshape([-1] + [1] * (out.ndim - axis - 1))
        out = np.take(out, below, axis=axis) * (1 - weight) + np.take(out, above, axis=axis) * weight
    return out


def nearest(array: np.ndarray, sides: Sequence[int]) -> np.ndarray:
    """`array`'s first len(sides) axes resampled to `sides` by nearest neighbour (a class map: no class is blended)."""
    out = np.asarray(array)
    for axis, side in enumerate(sides):
        size = out.shape[axis]
        if size != side:
            out = np.take(out, np.minimum((np.arange(side) * size) // side, size - 1), axis=axis)
    return out
