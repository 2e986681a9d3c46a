"""What the commands share: their option groups, the typed values the options become, and the Command class that
turns failures into one line and an exit code. Light on purpose: `explain --help` imports this and Click alone."""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from explain_cli.model import loading as models
from explain_cli.errors import BadArgument, ExplainError, model_failure
from explain_cli.inputs.shards import DEFAULT_MAX_PIXELS, Shard, parse_shard


def options(*options: Callable) -> Callable[[Callable], Callable]:
    """A decorator applying several Click options, in the order given."""

    def apply(command: Callable) -> Callable:
        return functools.reduce(lambda f, option: option(f), reversed(options), command)

    return apply


# --runtime: where forward-only passes run; every command that runs a Keras model takes it.
runtime_option = click.option(
    "--runtime",
    type=click.Choice(["auto", "tensorflow", "openvino", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="Where forward-only passes run (the feature pass before --layer, predictions, perturbed images); the "
    "gradient always runs in TensorFlow. auto: OpenVINO where it is installed (pip install "
    "'explain-cli[openvino]'), else TensorFlow. Converted passes are cached in $EXPLAIN_CACHE "
    "(default ~/.cache/explain).",
)
# --model, --weights, --labels, --preprocess: which classifier, shared by every command.
model_options = options(
    click.option(
        "--model",
        "model_spec",
        default="resnet50",
        show_default=True,
        metavar="NAME|PATH",
        help=f"A built-in model ({', '.join(models.BUILT_IN)}), your .keras / .h5 file, or a model explain can only "
        "run (a SavedModel folder, a .tflite or an .onnx file: rise and occlusion explain those).",
    ),
    click.option(
        "--weights",
        default="imagenet",
        show_default=True,
        metavar="imagenet|PATH",
        help="For built-in models: download ImageNet weights (cached in ~/.keras), or load a local "
        ".h5 / .weights.h5 file.",
    ),
    click.option(
        "--labels",
        "labels_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Class names, one a line, for your own model (default: ImageNet's for 1000 outputs, "
        "else numbers).",
    ),
    click.option(
        "--preprocess",
        type=click.Choice(models.PREPROCESS_MODES),
        help="Input scaling: caffe, tf ([-1, 1]), torch, unit (x / 255: [0, 1]) or none. Default: the built-in "
        "model's own; for your model files, the image converter of a keras-hub model saved with its preprocessor, "
        "else none.",
    ),
    click.option(
        "--import",
        "imports",
        multiple=True,
        metavar="MODULE|FILE.py",
        help="Import your code before the model loads, so the custom layers it names are defined (repeatable).",
    ),
    click.option(
        "--unsafe-deserialization",
        "unsafe",
        is_flag=True,
        help="Let the model file run the Python code it stores (Lambda layers). Only for files you trust: "
        "such code can do anything your account can.",
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16", "int8"]),
        default="auto",
        show_default=True,
        help="Compute the model in bfloat16 or float32; auto: bf16 where the CPU has AMX or AVX512-BF16, except "
        "for the methods that do not hold up in it (saliency, classviz, hirescam, layercam). Maps and scores are "
        "summed in float32. int8: forward passes quantised by OpenVINO (pip install 'explain-cli[int8]'), "
        "faster, and maps that differ slightly; never chosen by auto.",
    ),
    click.option("--calibration", metavar="PATH", help="With --precision int8: a folder of images to calibrate "
                 "it on (default: a seeded sample of 64 of the run's own images)."),
    runtime_option,
    click.option("--output", "output_name", metavar="NAME",
                 help="Of a model with several outputs, the one to explain (see `explain layers`)."),
    click.option("--multi-label", is_flag=True,
                 help="Read a model's logits as several labels per image, each its own sigmoid (a model ending in "
                 "sigmoids is read so anyway)."),
    click.option("--output-index", type=click.IntRange(0), metavar="K",
                 help="Read element K of a vector output as a value (a regression), explained as itself."),
    click.option("--input-size", callback=lambda ctx, param, value: _input_size(value), metavar="HEIGHTxWIDTH",
                 help="A model whose input size is free (a Keras file whose keras-hub image converter does not say it, "
                 "a SavedModel, .tflite or .onnx file): the size to feed it; DEPTHxHEIGHTxWIDTH for a model of "
                 "volumes or clips."),
    click.option("--layout", type=click.Choice(["nhwc", "nchw"]),
                 help="A SavedModel, .tflite or .onnx file: its input's layout, where its shape does not say."),
    click.option("--resize", type=click.Choice(["stretch", "letterbox"]),
                 help="How a picture is fitted to the model's input: stretched to it, or letterboxed (scaled whole, "
                 "centred on grey 114, as YOLO trains); boxes and maps come back in the picture's own pixels. "
                 "Default: stretch, or what the model file says of itself."),
    click.option("--outputs", "outputs_are", type=click.Choice(["logits", "probabilities"]),
                 help="A SavedModel, .tflite or .onnx file: what its output holds (default: its final softmax or "
                 "sigmoid says; else whether it is a probability vector)."),
)


def _input_size(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sides = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (2, 3):
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH (say 224x224), or DEPTHxHEIGHTxWIDTH for volumes "
                                 "and clips")
    if min(sides) < 1:
        raise click.BadParameter(f"{value!r}: every side must be 1 or more")
    return sides
# --threshold: several labels per image.
threshold_option = click.option(
    "--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
    help="Several labels per image (sigmoid outputs, --multi-label): a label is predicted, and explained, at this "
    "probability.")
# INPUTS, --batch-size, --max-pixels, --verbose and where batches run: what is read, and how.
input_options = options(
    click.argument("sources", nargs=-1, metavar="INPUTS..."),
    click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
                 help="Images per model call."),
    click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
                 type=click.IntRange(1), help="Refuse images with more pixels than this, before decoding."),
    click.option("-v", "--verbose", is_flag=True,
                 help="Say how each image was read (first frame of an animation, transparency, bit depth)."),
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Where batches run: here, or on a Ray cluster (pip install 'explain-cli[ray]'; OUTPUT_DIR must "
                 "be on a file system every node sees)."),
    click.option("--ray-address", metavar="ADDRESS", envvar="RAY_ADDRESS",
                 help="--engine ray: the cluster (default: $RAY_ADDRESS, else a local Ray started for the run)."),
    click.option("--workers", type=click.IntRange(1),
                 help="--engine ray: model workers (default: one per node of the cluster)."),
    click.option("--shard", metavar="I/N", callback=lambda ctx, param, value: _shard(value),
                 help="Take only shard I of N (0 <= I < N): the inputs whose path relative to the folder given "
                 "hashes to I. Shards may write into one output folder at once (manifest.shard-I-of-N.jsonl)."),
)
# --display-channels: the channels of a picture of N that its maps are drawn on.
display_option = click.option(
    "--display-channels", "display_channels", metavar="R,G,B", callback=lambda ctx, param, value: _channels(value),
    help="A model of N input channels: draw the maps on these channels of each picture, three numbers from 0 as red, "
    "green and blue (a false-colour view: 3,2,1) or one as grey. Default: the first three.")


# --clip-length, --clip-stride, --slices: a model of volumes or clips (batch, depth, height, width, channels).
grid_options = options(
    click.option("--clip-length", type=click.IntRange(1), metavar="FRAMES",
                 help="A model of clips: cut each video into clips of this many frames (default: the model's own)."),
    click.option("--clip-stride", type=click.IntRange(1), metavar="FRAMES",
                 help="A model of clips: a clip starts every this many frames (default: the clip's length)."),
    click.option("--slices", type=click.IntRange(1), default=5, show_default=True,
                 help="A volume's montage: slices along each of its three axes; a clip's strip: its key frames."),
)


def _channels(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        chosen = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not channel numbers split by commas", param_hint="--display-channels")
    if len(chosen) not in (1, 3) or min(chosen) < 0:
        raise click.BadParameter(f"{value!r}: three channel numbers from 0, or one", param_hint="--display-channels")
    return chosen


# --inputs, --input: the examples of a model of several inputs, and which picture input to explain.
several_inputs_options = options(
    click.option("--inputs", "inputs_table", type=click.Path(path_type=Path), metavar="TABLE.csv",
                 help="A model of several inputs: its examples, one a row, a column per input named by the input's "
                 "name (an image path, a .npy path, or numbers in one cell). Each picture input is explained in turn, "
                 "the others held as the row gives them."),
    click.option("--input", "input_name", metavar="NAME",
                 help="A model of several inputs: explain only this picture input (default: each in turn)."),
)
# --top, --json: the predictions printed per image, by the commands that print them.
prediction_options = options(
    click.option("--top", default=5, show_default=True, type=click.IntRange(1),
                 help="Predictions printed per image."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print predictions as JSON lines (default: a table on a terminal, TSV when piped)."),
)


def _shard(value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--shard") from None


truth_option = click.option(
    "--truth", metavar="folders|FILE.csv",
    help="The true classes: `folders` (each image's folder is named after its class, as in val/tabby/x.jpg) or "
    "a CSV with the header image,class. Adds truth and correct to the manifest and accuracy to the summary.",
)
target_options = options(
    click.option("--layer", help="The layer to explain (default: the model's last convolutional block). "
                 "See `explain layers`."),
    click.option("--class", "class_specs", multiple=True, metavar="CLASS",
                 help="Explain this class: a number, a label name or a WordNet id (repeatable); `truth`: each "
                 "image's true class (with --truth). Default: the top class."),
    click.option("--top-k", type=click.IntRange(1), help="Explain each image's N most probable classes."),
)
gradient_options = options(
    click.option("--score", type=click.Choice(["logit", "probability"]), default="logit", show_default=True,
                 help="Differentiate the pre-softmax class score (as in the paper) or the probability."),
    click.option("--counterfactual", is_flag=True,
                 help="Negate the gradients: show the regions whose removal would raise the score."),
)
def _perturbation(masks: int | None, cells: int | None, keep: float | None, who: str) -> Callable[[Any], Any]:
    """--masks, --cells, --keep (defaults shown, or None: the library's own for each method) and occlusion's."""
    shown = masks is not None
    return options(
        click.option("--masks", "rise_masks", type=click.IntRange(1), default=masks, show_default=shown,
                     help=f"{who}: random masks (one forward pass each)."),
        click.option("--cells", type=click.IntRange(1), default=cells, show_default=shown,
                     help=f"{who}: each mask is a grid of N × N cells, upsampled."),
        click.option("--keep", type=click.FloatRange(0.0, 1.0, min_open=True), default=keep, show_default=shown,
                     help=f"{who}: the probability a cell is kept."),
        click.option("--window", type=click.IntRange(1), help="occlusion: the grey patch's side, in the model input's "
                     "pixels (default: a seventh of its shorter side, 32 at 224)."),
        click.option("--stride", type=click.IntRange(1), help="occlusion: the patch's step (default: half the window)."),
    )


perturbation_options = _perturbation(4000, 7, 0.5, "rise")
# evaluate measures rise on a classifier and drise on a detector: each takes its own defaults unless given
evaluated_perturbation_options = _perturbation(None, None, None, "rise (default 4000 masks of 7 × 7 cells) and drise "
                                               "(1000 of 16 × 16), each cell kept at 0.5")


# --min-score, --iou, --max-boxes: which of an object detector's predictions are its detections.
detection_options = options(
    click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True,
                 help="Object detectors: a detection is a prediction whose class probability is at least this."),
    click.option("--iou", type=click.FloatRange(0.0, 1.0), help="Object detectors: non-maximum suppression's IoU "
                 "threshold (default: a keras-hub model's own, else 0.5)."),
    click.option("--max-boxes", type=click.IntRange(1), default=20, show_default=True,
                 help="Object detectors: detections per image, at most."),
)


# --boxes-output, --scores-output, --objectness-output, --box-format: how an object detector's outputs read.
DETECTOR_FORMAT = ("boxes_output", "scores_output", "objectness_output", "box_format", "output_layout")
detector_format_options = options(
    click.option("--output-layout", type=click.Choice(["yolov8", "yolov5", "detr", "boxes-scores"]),
                 help="Object detectors as model files (.onnx, .tflite, SavedModel): how the outputs read, where their "
                 "shapes do not say: yolov8 (B, 4+C, A), yolov5 (B, A, 5+C) with objectness, detr (normalised boxes, "
                 "logits), boxes-scores (two outputs)."),
    click.option("--boxes-output", metavar="NAME", help="Object detectors: the output holding the boxes (batch, A, 4), "
                 "of several."),
    click.option("--scores-output", metavar="NAME", help="Object detectors: the output holding the class scores "
                 "(batch, A, classes)."),
    click.option("--objectness-output", metavar="NAME", help="Object detectors: the output holding each prediction's "
                 "objectness (batch, A, 1), a YOLO's: it multiplies the class probabilities."),
    click.option("--box-format", metavar="FORMAT", help="Object detectors: how the boxes output reads: xyxy (default), "
                 "yxyx, xywh, center_xywh, center_yxhw in the input's pixels, or rel_ any of these in fractions of its "
                 "size."),
)


def perturbation_settings(options: dict) -> dict[str, Any]:
    """The perturbation methods' settings the options give (popping them); one not given is left to the library."""
    given = {"masks": options.pop("rise_masks"), "cells": options.pop("cells"), "keep": options.pop("keep"),
             "window": options.pop("window"), "stride": options.pop("stride")}
    return {name: value for name, value in given.items() if value is not None}


def detector_settings(options: dict, method: str, **extra: Any) -> Any:
    """The Detector's settings the options give (popping them): the model, how its outputs read, which predictions
    are detections, the method's own; `extra` and any left unset are the library's defaults."""
    from explain_cli.settings import DetectorSettings

    labels = options.pop("labels_file")
    check_imports(options["imports"])
    if options.pop("calibration", None):
        raise BadArgument("--calibration", "a detector calibrates int8 on the first batch it explains")
    given = dict(model=options.pop("model_spec"), layer=options.pop("layer", None), method=method,
                 precision=options.pop("precision"), preprocess=options.pop("preprocess"),
                 labels=str(labels) if labels else None, imports=tuple(options.pop("imports")),
                 unsafe=options.pop("unsafe"), input_size=options.pop("input_size"), runtime=options.pop("runtime"),
                 layout=options.pop("layout", None), resize=options.pop("resize", None),
                 min_score=options.pop("min_score"), iou=options.pop("iou"), max_boxes=options.pop("max_boxes"),
                 **{name: options.pop(name) for name in DETECTOR_FORMAT}, **extra)
    return DetectorSettings(**{name: value for name, value in given.items() if value is not None})


render_options = options(
    click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("explanations"), show_default=True, help="Where explanations are written."),
    click.option("--colormap", default="jet", show_default=True, help="Any matplotlib colormap name."),
    click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.4, show_default=True,
                 help="Heatmap opacity over the image."),
    click.option("--image-format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True,
                 help="Overlay format: JPEG (quality 90, fast) or lossless PNG."),
    click.option("--save-heatmap", is_flag=True, help="Also save the normalised map as .npy."),
    click.option("--figure", is_flag=True, help="Also save a panel: original | heatmap | overlay."),
    click.option("--report", "make_report", is_flag=True,
                 help="Build OUTPUT_DIR/report.html when the run ends (see `explain report`)."),
    click.option("--skip-existing", is_flag=True,
                 help="Skip images already explained in OUTPUT_DIR (by its manifest, with their files present): "
                 "rerun an interrupted batch to finish it."),
)


# --- options into typed values --------------------------------------------------------------------------------


def check_imports(imports: Sequence[str]) -> None:
    """--import: a usage error for a .py file that is not there (a module name is looked for when the model loads)."""
    for imported in imports:
        if imported.endswith(".py") and not Path(imported).is_file():
            raise click.BadParameter(f"{imported}: no such file", param_hint="--import")


def settings(options: dict, method: str = "gradcam", **extra: Any) -> Any:
    """The Explainer's settings the options give (popping them): the model, the layer, the precision."""
    from explain_cli.settings import Settings

    labels = options.pop("labels_file")
    spec = options.pop("model_spec")
    check_imports(options["imports"])
    threshold = extra.pop("threshold") if "threshold" in extra else options.pop("threshold", 0.5)
    return Settings(model=spec, layer=options.pop("layer", None), method=method, precision=options.pop("precision"),
                    calibration=options.pop("calibration"),
                    preprocess=options.pop("preprocess"), labels=str(labels) if labels else None,
                    weights=options.pop("weights"), imports=tuple(options.pop("imports")), unsafe=options.pop("unsafe"),
                    batch_size=options.get("batch_size", 32), max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS),
                    output=options.pop("output_name"), multi_label=options.pop("multi_label"),
                    output_index=options.pop("output_index"), threshold=threshold,
                    input_size=options.pop("input_size"), layout=options.pop("layout"),
                    outputs_are=options.pop("outputs_are"), runtime=options.pop("runtime"),
                    resize=options.pop("resize", None) or "stretch", input_name=options.pop("input_name", None),
                    display_channels=options.pop("display_channels", None),
                    clip_length=options.pop("clip_length", None), clip_stride=options.pop("clip_stride", None),
                    **extra)


def run_options(options: dict) -> Any:
    """How the run reads its inputs, prints, and where its batches run."""
    from explain_cli.cli.runs import RunOptions

    if not options["sources"] and options.get("inputs_table") is None:
        raise click.UsageError("Missing argument 'INPUTS...'.")
    return RunOptions(batch_size=options["batch_size"], max_pixels=options["max_pixels"], verbose=options["verbose"],
                      style=style(options), engine=options["engine"], ray_address=options["ray_address"],
                      workers=options["workers"], shard=options["shard"], inputs=options.get("inputs_table"))


def output_options(options: dict) -> Any:
    from explain_cli.cli.runs import OutputOptions

    return OutputOptions(out_dir=options["output_dir"], colormap=options["colormap"], alpha=options["alpha"],
                         image_format=options["image_format"], save_heatmap=options["save_heatmap"],
                         figure=options["figure"], report=options["make_report"],
                         skip_existing=options["skip_existing"], slices=options.get("slices", 5))


def class_request(options: dict) -> Any:
    from explain_cli.cli.runs import ClassRequest

    return ClassRequest(tuple(options["class_specs"]), options["top_k"], options.get("truth"))


def style(options: dict) -> str:
    if options.get("as_json"):
        return "json"
    return "table" if sys.stdout.isatty() else "tsv"


class Command(click.Command):
    """A command whose run-time failures print one line and exit 1, whose unusable arguments are usage errors
    (exit 2); signals exit 130 (INT) or 143 (TERM)."""

    def invoke(self, ctx: click.Context) -> Any:
        from explain_cli.model import backend
        from explain_cli.running import interrupts

        backend.quiet_process()  # this process is the command line's: TensorFlow's noise never reaches its user
        # Paths are bytes on Linux: print undecodable ones as the bytes they are, not as an exception.
        for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors=errors)
        try:
            with interrupts.installed(), warnings.catch_warnings():
                # Libraries' Python warnings (Pillow on a damaged file, Keras on a model's structure) are
                # multi-line noise to a user: what matters reaches them as an error or a note.
                warnings.filterwarnings("ignore", module=r"(PIL|keras|tensorflow|h5py|absl)(\.|$)")
                return super().invoke(ctx)
        except BadArgument as error:
            if error.option is None:
                raise click.UsageError(str(error), ctx=ctx) from None
            raise click.BadParameter(str(error), ctx=ctx, param_hint=error.option) from None
        except ExplainError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)
        except (interrupts.Interrupted, KeyboardInterrupt) as stop:
            signum = stop.signum if isinstance(stop, interrupts.Interrupted) else signal.SIGINT
            click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            ctx.exit(128 + signum)
        except BrokenPipeError:
            # `explain predict dir | head`: the reader left; stop quietly, like any Unix filter.
            _silence_stdout()
            ctx.exit(141)
        except Exception as error:  # after a signal, whatever a library made of it (see interrupts.received)
            signum = interrupts.received()
            if signum is None:
                failure = model_failure(error)  # the user's model failed as it ran: one line, not TensorFlow's stack
                if failure is None:
                    raise
                click.echo(f"error: the model failed as it ran: {failure}", err=True)
                ctx.exit(1)
            click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            ctx.exit(128 + signum)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
