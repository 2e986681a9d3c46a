"""The command line: parse, call the pipeline, print. Errors become one line and an exit code.

Exit codes: 0 all done, 1 some input or the run failed, 2 bad usage, 130 / 143 interrupted by
SIGINT / SIGTERM, 141 stdout closed by its reader.
Nothing here imports TensorFlow at module level, so `explain --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from explain_cli import __version__, console, models, output, pipeline, render
from explain_cli.commands import common
from explain_cli.commands import evaluate as evaluate_command
from explain_cli.commands import report as report_command
from explain_cli.errors import ExplainError
from explain_cli.methods import METHODS
from explain_cli.methods.saliency import PIXEL_METHODS


class _Group(click.Group):
    command_class = common.Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="explain")
def cli() -> None:
    """Show why an image classifier decided what it decided.

    INPUTS are image files, folders (searched recursively) or - to read paths from stdin.
    Predictions go to stdout; explanations are written as image files; progress, warnings and
    errors go to stderr.

    \b
      explain gradcam cat.jpg                      top-5 predictions, explanations/cat.gradcam.281-tabby.jpg
      explain gradcam photos/ -o out/ --top-k 3    a folder, three classes per image
      explain predict photos/ | sort -t$'\\t' -k5 -gr
      explain layers --model vgg16                 layers that can be explained
    """


@cli.command()
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@common.target_options
@common.gradient_options
@common.render_options
def gradcam(**options: Any) -> None:
    """Grad-CAM: which regions raised each class score (Selvaraju et al. 2017).

    For each image, prints the top predictions and writes
    OUTPUT_DIR/<name>.gradcam.<class>-<label>.jpg, mirroring folders, plus a line per explanation
    in OUTPUT_DIR/manifest.jsonl. The same as `explain cam --method gradcam`.
    """
    _explain_cam("gradcam", 64, **options)


@cli.command()
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
@click.option("--method", type=click.Choice(list(METHODS)), default="gradcam", show_default=True,
              help="gradcam, gradcam++, xgradcam, hirescam, layercam (gradients); cam (a global-average-"
              "pooling + Dense head's weights); eigencam (first principal component); scorecam (masked "
              "forward passes); attention-rollout (a transformer's attention, multiplied through its blocks).")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True,
              help="scorecam: the channels of highest mean activation used as masks (one forward pass each).")
@common.target_options
@common.gradient_options
@common.render_options
def cam(method: str, max_masks: int, **options: Any) -> None:
    """Class-activation maps at a layer, by any method: one flag to compare them on the same images.

    Writes OUTPUT_DIR/<name>.<method>.<class>-<label>.jpg and a manifest line per explanation, like
    `explain gradcam`.
    """
    _explain_cam(method, max_masks, **options)


@cli.command()
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
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
    from explain_cli import explainer

    def build(model: models.LoadedModel, graph: Any, cut: Any, classes: list[int], top_k: int, per_image: bool) -> Any:
        return explainer.compile_saliency(model, graph, method, layer=cut.layer, classes=classes, top_k=top_k,
                                          samples=samples, noise=noise, steps=steps, seed=seed, per_image=per_image)

    _explain(method, build, grey_map=True, **options)


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
    from explain_cli import explainer, inside

    sources = common.sources(options, skip_dir=output_dir)
    model = common.load(options)
    graph = explainer.graph_of(model)
    if layer_names:
        try:
            points = [graph.find(name) for name in layer_names]
        except ExplainError as error:
            raise click.BadParameter(str(error), param_hint="--layer") from None
        flat = [p.name for p in points if not p.explainable]
        if flat:
            raise click.BadParameter(f"{flat[0]!r} has no 4-D output (or tokens on a grid) to draw", param_hint="--layer")
        layers = [p.name for p in points]
    else:
        layers, available = inside.default_activation_layers(graph, max_layers)
        if available > len(layers):
            click.echo(f"{model.name}: {available} convolution and pooling layers; drawing {len(layers)} "
                       "spread evenly (--layer to choose, --max-layers for more)", err=True)
    name = model.name

    def make(loaded: models.LoadedModel) -> tuple[Any, Any]:  # plain values only: see _explain
        step = inside.compile_activations(loaded, explainer.graph_of(loaded), layers)
        return common.compute_of(step), pipeline.activation_grids(output_dir, layers, max_channels, name)

    with output.writing_into(output_dir):
        manifest = output.Manifest(output_dir, output.record_file(output.MANIFEST, options["shard"]))
    try:
        common.report(common.start(sources, make, model, options), console.Tally(len(sources)), options, manifest)
    finally:
        manifest.close()


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
    from explain_cli import explainer, inside

    model = common.load(options, ["classviz"])
    class_index = common.resolve_class(model, class_spec)
    label = model.labels.name(class_index)
    graph = explainer.graph_of(model)
    settings = inside.ClassVizSettings(steps, lr, l2, jitter, blur_every, blur_sigma, seed)
    final, snapshots, logits = inside.class_visualisation(model, graph, class_index, settings, every)
    stem = f"classviz.{class_index}-{output.safe_label(label)}"
    written = [(step, f"{stem}.step{step:04d}.png", picture) for step, picture in snapshots]
    written.append((steps, f"{stem}.png", final))
    files = output.FileSet(output_dir)
    with files.complete_or_removed():
        for _, name, picture in written:
            files.write(name, render.encode(picture, "png"))
        with output.writing_into(output_dir):
            manifest = output.Manifest(output_dir)
            try:  # logits[i] is the logit after step i
                manifest.append([{"model": model.name, "method": "classviz", "class_index": class_index,
                                  "label": label, "step": step, "logit": logits[step], "file": name}
                                 for step, name, _ in written])
            finally:
                manifest.close()
    click.echo(f"{model.name}: class {class_index} ({label}) logit {logits[0]:.3f} → {logits[-1]:.3f} "
               f"in {steps} steps", err=True)
    sys.stdout.write(f"{output_dir / stem}.png\n")


def _explain_cam(method: str, max_masks: int, **options: Any) -> None:
    from explain_cli import explainer

    score, counterfactual = options.pop("score"), options.pop("counterfactual")
    if counterfactual and not METHODS[method].gradients:
        raise click.BadParameter(f"{method} uses no gradients to negate", param_hint="--counterfactual")

    def build(model: models.LoadedModel, graph: Any, cut: Any, classes: list[int], top_k: int, per_image: bool) -> Any:
        return explainer.compile_explain(model, cut, method, classes=classes, top_k=top_k, score=score,
                                         counterfactual=counterfactual, max_masks=max_masks, per_image=per_image)

    _explain(f"{method}-counterfactual" if counterfactual else method, build, **options)


@cli.command()
@common.input_options
@common.prediction_options
@common.truth_option
@common.model_options
def predict(**options: Any) -> None:
    """Print the top predictions for each image; write nothing."""
    from explain_cli import explainer

    sources = common.sources(options, skip_dir=None)
    model = common.load(options)
    truth = common.truth(options, sources, model)
    top = options["top"]

    def make(loaded: models.LoadedModel) -> tuple[Any, Any]:
        step = explainer.compile_predict(loaded, explainer.graph_of(loaded))
        return common.compute_of(step), pipeline.predictions_only(loaded.labels.names, top, truth)

    common.report(common.start(sources, make, model, options), common.tally(sources, truth), options)


@cli.command()
@common.model_options
def layers(**options: Any) -> None:
    """List the layers that can be explained: 4-D feature maps, and a transformer's tokens with the patch grid
    they are cut as, inside subclassed layers too (named by path); * marks the default."""
    from explain_cli import explainer

    model = common.load(options)
    graph = explainer.graph_of(model)
    default = explainer.default_layer(graph, model)
    rows = [(p.name, p.describe()) for p in graph.explainable()]
    width = max((len(name) for name, _ in rows), default=0)
    for name, shape in rows:
        mark = "*" if name == default else " "
        sys.stdout.write(f"{mark} {name:<{width}}  {shape}\n")


def _explain(name: str, build: Callable[..., Any], grey_map: bool = False, **options: Any) -> None:
    """Explain every input with the step `build` makes; `name` names the method in files and manifest."""
    common.check_class_options(options)
    if not render.is_colormap(options["colormap"]):
        raise click.BadParameter(f"unknown matplotlib colormap {options['colormap']!r}", param_hint="--colormap")
    out_dir: Path = options["output_dir"]
    sources = common.sources(options, skip_dir=out_dir)
    skipped = 0
    if options["skip_existing"]:
        done = output.explained_images(out_dir, name)
        if out_dir.is_dir():
            output.remove_stale_temporaries(out_dir)
        todo = [s for s in sources if s.shown not in done]
        skipped, sources = len(sources) - len(todo), todo
        if not sources:  # nothing left to do: no need to load a model for it
            click.echo(console.Tally(0, skipped=skipped).summary(None), err=True)
            return
    with output.writing_into(out_dir):  # before the model loads: an unwritable folder fails at once
        manifest = output.Manifest(out_dir, output.record_file(output.MANIFEST, options["shard"]))
    try:
        model = common.load(options, [name.removesuffix("-counterfactual")])
        target = common.target(options, sources, model)
        truth, per_image, layer = target.truth, target.per_image, target.layer
        chosen = "" if options["layer"] else " (default)"
        click.echo(f"{model.name}: {name} at layer {layer}{chosen}", err=True)
        render_options = pipeline.RenderOptions(
            out_dir=out_dir,
            method=name,
            layer=layer,
            model=model.name,
            colormap=options["colormap"],
            alpha=options["alpha"],
            image_format=options["image_format"],
            save_heatmap=options["save_heatmap"],
            figure=options["figure"],
            grey_map=grey_map,
        )
        classes, top_k, top = target.classes, options["top_k"] or 1, options["top"]

        def make(loaded: models.LoadedModel) -> tuple[Any, Any]:
            # Also called on each Ray worker with its own copy of the model: it captures plain values only.
            from explain_cli import explainer, split

            flat = explainer.graph_of(loaded)
            step = build(loaded, flat, split.split(flat, layer), classes, top_k, per_image)
            finish = pipeline.explanations(loaded.labels.names, top, render_options, truth)
            return common.compute_of(step, truth if per_image else None), finish

        run = common.start(sources, make, model, options)
        with common.report_after(options["make_report"], out_dir):
            common.report(run, common.tally(sources, truth, skipped), options, manifest)
    finally:
        manifest.close()


cli.add_command(evaluate_command.evaluate)
cli.add_command(report_command.report)


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
