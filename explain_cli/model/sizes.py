"""The sides a model is fed at: a picture's (height, width, channels), a volume's or a clip's (depth, height, width,
channels); where the model leaves them free, as given (--input-size, --clip-length) or as its keras-hub image converter
resizes."""

from __future__ import annotations

from typing import Any

from explain_cli.errors import BadArgument, ExplainError
from explain_cli.model.graph import image_shape_of


def grid_of(model: Any, spec: str, given: tuple[int, ...] | None = None, input_name: str | None = None,
            frames: int | None = None) -> tuple[int | None, int, int, int]:
    """(depth, height, width, channels) the model is fed at: depth None for pictures (size_of); a model of volumes or
    clips (batch, depth, height, width, channels) must fix its sides, or be given them (--input-size DxHxW; a free
    depth alone, `frames`: --clip-length)."""
    shape = image_shape_of(model, input_name)
    if len(shape) != 5:
        if given is not None and len(given) == 3:
            raise BadArgument("--input-size", f"{spec} takes pictures: give HEIGHTxWIDTH")
        return (None, *size_of(model, spec, given, input_name))
    sides = tuple(shape[1:4])
    if sides[0] is None and frames is not None and given is None:
        sides = (frames, *sides[1:])
    if given is not None:
        if len(given) != 3 or any(side is not None and side != int(want) for side, want in zip(sides, given)):
            shown = "×".join("any" if side is None else str(side) for side in sides)
            raise BadArgument("--input-size", f"{spec} takes volumes or clips of {shown}, not "
                              f"{'×'.join(str(g) for g in given)}")
        sides = tuple(int(g) for g in given)
    if None in sides or not shape[4]:
        raise BadArgument("--input-size", f"{spec}: the model's input (batch, depth, height, width, channels) has no "
                          "fixed depth, height and width; give --input-size DEPTHxHEIGHTxWIDTH (or, for clips of any "
                          "length, --clip-length FRAMES)")
    depth, height, width = (int(side) for side in sides)
    return depth, height, width, int(shape[4])


def size_of(model: Any, spec: str, given: tuple[int, ...] | None = None,
            input_name: str | None = None) -> tuple[int, int, int]:
    """(height, width, channels) the model is fed at: its input's own size; where that is free, `given`
    (--input-size) or the size its keras-hub image converter resizes to (which must then agree)."""
    shape = image_shape_of(model, input_name)
    if len(shape) != 4:
        raise ExplainError(f"{spec}: expected one image input (batch, height, width, channels), or a volume's or "
                           "a clip's (batch, depth, height, width, channels)")
    _, height, width, channels = shape
    given = None if given is None else (int(given[0]), int(given[1]))  # a list from Python compares as a tuple
    if not channels:
        raise ExplainError(f"{spec}: the model's input has no fixed number of channels")
    if given is not None and any(side is not None and side != want for side, want in zip((height, width), given)):
        shown = "×".join("any" if side is None else str(side) for side in (height, width))
        raise BadArgument("--input-size", f"{spec} takes {shown} images, not {given[0]}×{given[1]}")
    if height is not None and width is not None:
        return int(height), int(width), int(channels)
    converted = _converter_size(model)
    if given is not None and converted is not None and given != converted:  # it would resize them back
        raise BadArgument("--input-size", f"{spec}: its image converter resizes images to "
                          f"{converted[0]}×{converted[1]}, not {given[0]}×{given[1]}")
    size = given or converted
    if size is None:
        raise BadArgument("--input-size", f"{spec}: the model's input has no fixed height and width; give "
                          "--input-size HEIGHTxWIDTH")
    return size[0], size[1], int(channels)


def _converter_size(model: Any) -> tuple[int, int] | None:
    """The (height, width) a keras-hub task's image converter resizes to, where it says one."""
    size = getattr(converter_layer(model), "image_size", None)
    return (int(size[0]), int(size[1])) if size is not None and None not in tuple(size) else None


def converter_layer(model: Any) -> Any:
    """A keras-hub task's image converter (a layer), where it was saved with its preprocessor; else None."""
    return getattr(getattr(model, "preprocessor", None), "image_converter", None)
