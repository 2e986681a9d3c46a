"""Clips: a video file's frames (PyAV) or a folder's pictures in name order, as uint8 RGB frames (T, H, W, 3).

A long video is cut into the model's clips at discovery (`clip_windows`): `--clip-length` frames each (the model's own
depth by default), a clip starting every `--clip-stride` frames (default: one after another). Each clip is an example of
its own, decoded alone, so a long video never sits in memory whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explain_cli import errors
from explain_cli.errors import BadInput, first_line

EXTRA = errors.install("video")
FRAMES_RATE = 8.0  # a folder of frames or an array says no rate: its overlay video plays at this


def frame_count(path: Path) -> int:
    """How many frames a video holds: its stream's count where the container says it, else counted by decoding."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def clip_windows(frames: int, length: int, stride: int) -> list[tuple[int, int]]:
    """(first frame, frame count) of each clip of `length` frames, one every `stride`; a video shorter than a clip is
    one clip of its own frames (too short: refused when read), and the last clip reaches the video's end."""
    if frames <= length:
        return [(0, frames)]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] + length < frames:
        starts.append(frames - length)  # the video's last frames are explained too
    return [(start, length) for start in starts]


def read_video(path: Path, shown: str, start: int, count: int | None, max_pixels: int) -> tuple[np.ndarray, float]:
    """Frames [start, start + count) of a video as (T, H, W, 3) uint8 RGB, and its frames per second."""
    try:
        import av
    except ModuleNotFoundError:
        raise BadInput(shown, f"reading a video needs PyAV: {EXTRA}") from None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or FRAMES_RATE)
            frames = []
            for index, frame in enumerate(container.decode(stream)):
                if index < start:
                    continue
                if count is not None and len(frames) == count:
                    break
                pixels = frame.width * frame.height * (count or len(frames) + 1)
                if pixels > max_pixels:  # a clip's pixels are bounded as a volume's voxels are
                    raise BadInput(shown, f"a clip of {count or len(frames) + 1} frames of {frame.width}x"
                                   f"{frame.height} is {pixels:,} pixels, over --max-pixels {max_pixels:,}")
                frames.append(frame.to_ndarray(format="rgb24"))
    except BadInput:
        raise
    except (av.error.FFmpegError, IndexError, OSError) as error:
        raise BadInput(shown, f"cannot read it as a video: {type(error).__name__}: {first_line(error)}") from None
    if not frames:
        raise BadInput(shown, f"no frames from frame {start} on")
    return np.stack(frames), rate


def read_frames(files: tuple[Path, ...], shown: str, max_pixels: int) -> np.ndarray:
    """Pictures (a folder's, found in name order) as the frames of one clip (T, H, W, 3) uint8; all of one size."""
    from explain_cli.inputs.finding import file_source
    from explain_cli.inputs.sources import decode

    frames = [decode(file_source(str(file)), max_pixels).rgb for file in files]
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise BadInput(shown, f"its frames are of {len(sizes)} sizes: a clip's frames are all of one size")
    return np.stack(frames)
