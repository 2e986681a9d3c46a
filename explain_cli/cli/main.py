"""The command line: parse options into typed values, call the library's runs (cli/runs.py), exit with their code.

Exit codes: 0 all done, 1 some input or the run failed, 2 bad usage, 130 / 143 interrupted by
SIGINT / SIGTERM, 141 stdout closed by its reader.
Only Click and the option groups load to parse: `explain --help` is instant, and each command imports what it runs
when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from explain_cli import __version__
from explain_cli.cli import common
from explain_cli.cli import detect_command
from explain_cli.cli import evaluate_command
from explain_cli.cli import report_command
from explain_cli.cli import similar_command
from explain_cli.methods import METHODS
from explain_cli.methods import PERTURBATION_METHODS, PIXEL_METHODS


class _Group(click.Group):
    command_class = common.Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="explain")
def cli() -> None:
    """Show why an image model decided what it decided: a classifier, a segmentation model, an object detector.

    INPUTS are image files, folders (searched recursively) or - to read paths from stdin.
    Predictions go to stdout; explanations are written as image files; progress, warnings and
    errors go to stderr.

    \b
      explain gradcam cat.jpg                      top-5 predictions, explanations/cat.gradcam.281-tabby.jpg
      explain gradcam photos/ -o out/ --top-k 3    a folder, three classes per image
      explain predict photos/ | sort -t$'\\t' -k5 -gr
      explain layers --model vgg16                 layers that can be explained
      explain detect street.jpg --model det.keras  a map for every box a detector finds
    """


@cli.command()
@common.display_option
@common.grid_options
@common.several_inputs_options
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@common.threshold_option
@common.target_options
@common.gradient_options
@common.render_options
def gradcam(**options: Any) -> None:
    """Grad-CAM: which regions raised each class score (Selvaraju et al. 2017).

    For each image, prints the top predictions and writes
    OUTPUT_DIR/<name>.gradcam.<class>-<label>.jpg, mirroring folders, plus a line per explanation
    in OUTPUT_DIR/manifest.jsonl. The same as `explain cam --method gradcam`.
    """
    _explain_cam("gradcam", 64, options)


@cli.command()
@common.display_option
@common.grid_options
@common.several_inputs_options
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@common.threshold_option
@click.option("--method", type=click.Choice([*METHODS, *PERTURBATION_METHODS]), default="gradcam", show_default=True,
              help="gradcam, gradcam++, xgradcam, hirescam, layercam (gradients); cam (a global-average-"
              "pooling + Dense head's weights); eigencam (first principal component); scorecam (masked "
              "forward passes); attention-rollout (a transformer's attention, multiplied through its blocks); "
              "rise (random masks), occlusion (a sliding grey patch): forward passes alone, for any model.")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True,
              help="scorecam: the channels of highest mean activation used as masks (one forward pass each).")
@common.perturbation_options
@click.option("--seed", type=int, default=0, show_default=True, help="rise: the masks' seed.")
@common.target_options
@common.gradient_options
@common.render_options
def cam(method: str, max_masks: int, seed: int, **options: Any) -> None:
    """Class-activation maps at a layer, by any method: one flag to compare them on the same images.

    Writes OUTPUT_DIR/<name>.<method>.<class>-<label>.jpg and a manifest line per explanation, like
    `explain gradcam`.
    """
    _explain_cam(method, max_masks, options, seed=seed, **common.perturbation_settings(options))


@cli.command()
@common.display_option
@common.grid_options
@common.several_inputs_options
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@common.threshold_option
@click.option("--method", type=click.Choice(list(PIXEL_METHODS)), default="vanilla", show_default=True,
              help="vanilla gradients, smoothgrad, integrated-gradients (black baseline), guided-backprop, "
              "guided-gradcam.")
@click.option("--samples", type=click.IntRange(1), default=25, show_default=True, help="smoothgrad: noisy copies.")
@click.option("--noise", type=click.FloatRange(0.0, 1.0), default=0.15, show_default=True,
              help="smoothgrad: the noise's σ as a fraction of the pixel range.")
@click.option("--steps", type=click.IntRange(1), default=64, show_default=True,
              help="integrated-gradients: steps from the black baseline.")
@click.option("--seed", type=int, default=0, show_default=True, help="smoothgrad: the noise's seed.")
@common.target_options
@common.render_options
def saliency(method: str, samples: int, noise: float, steps: int, seed: int, **options: Any) -> None:
    """Pixel attributions: which input pixels the class score is most sensitive to.

    Writes OUTPUT_DIR/<name>.<method>.<class>-<label>.jpg (an overlay) and .map.png (the grey map at the
    model's input resolution). --layer is where guided-gradcam takes its Grad-CAM.
    """
    from explain_cli.cli import runs

    settings = common.settings(options, method, samples=samples, noise=noise, steps=steps, seed=seed)
    runs.explain(settings, options["sources"], sys.stdin, common.class_request(options), options["top"],
                 common.output_options(options), common.run_options(options), grey_map=True)


@cli.command()
@common.input_options
@common.model_options
@click.option("--layer", "layer_names", multiple=True, metavar="NAME",
              help="A layer to draw (repeatable). Default: every convolution and pooling layer, up to --max-layers.")
@click.option("--max-layers", type=click.IntRange(1), default=16, show_default=True,
              help="Without --layer: how many layers at most, spread evenly through the network.")
@click.option("--max-channels", type=click.IntRange(1), default=64, show_default=True,
              help="Channels drawn per layer (the first ones).")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("explanations"), show_default=True, help="Where the grids are written.")
def activations(layer_names: tuple[str, ...], max_layers: int, max_channels: int, output_dir: Path,
                **options: Any) -> None:
    """Draw what layers see: each layer's channels as a grid, 16 per row, in viridis.

    Each channel is standardised on its own (mean 0, std 1, then ×64 + 128). Writes
    OUTPUT_DIR/<name>.activations.<layer>.png for every input and layer.
    """
    from explain_cli.cli import runs

    runs.activations(common.settings(options), options["sources"], sys.stdin, layer_names, max_layers, max_channels,
                     output_dir, common.run_options(options))


@cli.command()
@click.argument("class_spec", metavar="CLASS")
@common.model_options
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Gradient-ascent steps.")
@click.option("--lr", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Step size in pixels of 0-255, along the class gradient normalised to unit RMS.")
@click.option("--l2", type=click.FloatRange(0.0), default=0.5, show_default=True,
              help="λ: the pull of each pixel towards mid grey, λ‖x − ½‖² with x in [0, 1], relative to the "
              "class gradient's RMS (the same for any input scaling).")
@click.option("--jitter", type=click.IntRange(0), default=0, show_default=True,
              help="Shift the image by up to this many pixels at random before each step.")
@click.option("--blur-every", type=click.IntRange(0), default=0, show_default=True,
              help="Blur the image every K steps (0: never).")
@click.option("--blur-sigma", type=click.FloatRange(0.0, min_open=True), default=0.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="The starting noise and the jitter.")
@click.option("--every", type=click.IntRange(0), default=0, show_default=True,
              help="Also write the image every K steps.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("explanations"), show_default=True, help="Where the images are written.")
def classviz(class_spec: str, steps: int, lr: float, l2: float, jitter: int, blur_every: int, blur_sigma: float,
             seed: int, every: int, output_dir: Path, **options: Any) -> None:
    """Class model visualisation: the image the model finds most CLASS-like (Simonyan et al. 2014).

    Gradient ascent on an image x in [0, 1] for the class logit minus λ‖x − ½‖², from seeded noise, the
    image kept within the pixel range at every step. Writes
    OUTPUT_DIR/classviz.<class>-<label>.png (and .stepNNNN.png with --every) and prints its path.
    """
    from explain_cli.steps import activations as inside
    from explain_cli.cli import runs

    viz = inside.ClassVizSettings(steps, lr, l2, jitter, blur_every, blur_sigma, seed)
    runs.classviz(common.settings(options), class_spec, viz, every, output_dir, runs.RunOptions())


def _explain_cam(method: str, max_masks: int, options: dict, **extra: Any) -> None:
    from explain_cli.cli import runs

    settings = common.settings(options, method, score=options.pop("score"),
                               counterfactual=options.pop("counterfactual"), max_masks=max_masks, **extra)
    runs.explain(settings, options["sources"], sys.stdin, common.class_request(options), options["top"],
                 common.output_options(options), common.run_options(options))


@cli.command()
@common.display_option
@common.input_options
@click.option("--top", default=5, show_default=True, type=click.IntRange(1),
              help="Classes printed per image (those explained: present on --min-area of it, most pixels first).")
@click.option("--json", "as_json", is_flag=True, help="Print each image's classes as JSON lines (default: a table on "
              "a terminal, TSV when piped: image, class, label, pixel share, mean probability).")
@common.model_options
@click.option("--method", type=click.Choice([*METHODS, *PIXEL_METHODS, *PERTURBATION_METHODS]),
              help="Any class-activation or pixel method, or rise or occlusion (a class's mean probability over its "
              "region). Default: gradcam; rise for a model file (.onnx, .tflite, SavedModel), which has no layers.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="One sigmoid channel per pixel: the foreground is where its probability is at least this.")
@click.option("--cells", type=click.IntRange(1), default=7, show_default=True,
              help="rise: each mask is a grid of N × N cells, upsampled.")
@click.option("--keep", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5, show_default=True,
              help="rise: the probability a cell is kept.")
@click.option("--window", type=click.IntRange(1), help="occlusion: the grey patch's side, in the model input's pixels.")
@click.option("--stride", type=click.IntRange(1), help="occlusion: the patch's step (default: half the window).")
@click.option("--seed", type=int, default=0, show_default=True, help="rise: the masks' seed.")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True, help="scorecam: masks.")
@click.option("--min-area", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="Explain each class predicted on at least this share of the image, most pixels first.")
@click.option("--region", metavar="x0,y0,x1,y1", help="Explain the classes over this box (the image's pixels, x1 and "
              "y1 exclusive) instead of where each is predicted.")
@click.option("--region-masks", type=click.Path(path_type=Path), metavar="DIR",
              help="Explain the classes over each image's own region: a PNG of the same relative path under DIR, "
              "non-zero inside.")
@click.option("--masks", "old_masks", metavar="N", help="rise: random masks (one forward pass each; default 4000). "
              "A folder here is read as --region-masks, its old name.")
@click.option("--truth-masks", type=click.Path(path_type=Path), metavar="DIR",
              help="True label PNGs (each pixel its class number), the same relative paths under DIR: adds each "
              "class's IoU and the mean IoU to the summary.")
@common.target_options
@common.gradient_options
@common.render_options
def segment(method: str | None, threshold: float, cells: int, keep: float, window: int | None, stride: int | None,
            seed: int, max_masks: int, min_area: float, region: str | None, region_masks: Path | None,
            old_masks: str | None, truth_masks: Path | None, **options: Any) -> None:
    """Segmentation models: why each class was predicted where it was (Seg-Grad-CAM, Vinogradova et al. 2020).

    A class is explained by the sum of its pixel scores over a region: where it is predicted (default), a box
    (--region) or a mask (--region-masks). For each image, writes OUTPUT_DIR/<name>.segmentation.png (its classes coloured
    over it, with a legend) and OUTPUT_DIR/<name>.<method>.<class>-<label>.jpg per class explained, a manifest line
    each, and prints each explained class with its share of the pixels and mean probability.
    """
    from explain_cli.cli import runs
    from explain_cli.tasks import segment as segmenting

    if click.get_current_context().get_parameter_source("model_spec") is click.core.ParameterSource.DEFAULT:
        raise click.UsageError("explain segment needs a segmentation model: --model FILE (the default, resnet50, is a "
                               "classifier)")
    from explain_cli.explainer import default_method

    rise_masks = int(old_masks) if old_masks is not None and old_masks.isdigit() else 4000
    if old_masks is not None and not old_masks.isdigit():
        if region_masks is not None:
            raise click.UsageError("--masks is the old name of --region-masks: give one")
        click.echo("note: segment's --masks DIR is now --region-masks DIR; --masks N counts RISE's masks, as in cam, "
                   "evaluate and detect", err=True)
    masks = region_masks if region_masks is not None else Path(old_masks) if old_masks and not old_masks.isdigit() \
        else None
    if region and masks:
        raise click.UsageError("--region and --region-masks are exclusive: one region per image")
    box = segmenting.parse_box(region) if region else None
    settings = common.settings(options, method or default_method(options["model_spec"]), score=options.pop("score"),
                               counterfactual=options.pop("counterfactual"), max_masks=max_masks, min_area=min_area,
                               threshold=threshold, masks=rise_masks, cells=cells, keep=keep, window=window,
                               stride=stride, seed=seed)
    runs.segment(settings, options["sources"], sys.stdin, common.class_request(options), options["top"],
                 common.output_options(options), common.run_options(options), box, masks, truth_masks)


@cli.command()
@common.several_inputs_options
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@common.threshold_option
def predict(**options: Any) -> None:
    """Print the top predictions for each image; write nothing."""
    from explain_cli.cli import runs

    runs.predict(common.settings(options), options["sources"], sys.stdin, options["truth"], options["top"],
                 common.run_options(options))


@cli.command()
@common.model_options
def layers(**options: Any) -> None:
    """List the layers that can be explained: 4-D feature maps, and a transformer's tokens with the patch grid
    they are cut as, inside subclassed layers too (named by path); * marks the default."""
    from explain_cli.cli import runs

    runs.layers(common.settings(options))


cli.add_command(detect_command.detect)
cli.add_command(evaluate_command.evaluate)
cli.add_command(report_command.report)
cli.add_command(similar_command.similar)


def main(argv: Sequence[str] | None = None) -> None:
    """The `explain` command. Once a run that loaded TensorFlow is over, the process ends at once: everything it
    wrote is closed by then, and tearing down TensorFlow's and Keras' objects took ~0.9 s of every run (measured).
    With Ray the normal exit stays, so that Ray's own shutdown runs."""
    try:
        cli.main(args=argv, prog_name="explain")
        code: Any = 0
    except SystemExit as done:
        code = done.code
    if "tensorflow" not in sys.modules or "ray" in sys.modules:
        sys.exit(code)
    if isinstance(code, str):  # sys.exit("message"): Python would print it and exit 1
        sys.stderr.write(code + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that closed the pipe: the run has already said so
            pass
    logging.shutdown()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
