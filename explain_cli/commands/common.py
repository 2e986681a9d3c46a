"""What the commands share: their option groups, and loading, running and reporting a batch."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import numpy as np

from explain_cli import console, inputs, interrupts, models, output, pipeline
from explain_cli.errors import ExplainError


def options(*options: Callable) -> Callable[[Callable], Callable]:
    """A decorator applying several Click options, in the order given."""

    def apply(command: Callable) -> Callable:
        return functools.reduce(lambda f, option: option(f), reversed(options), command)

    return apply


# --model, --weights, --labels, --preprocess: which classifier, shared by every command.
model_options = options(
    click.option(
        "--model",
        "model_spec",
        default="resnet50",
        show_default=True,
        metavar="NAME|PATH",
        help=f"A built-in model ({', '.join(models.BUILT_IN)}) or your .keras / .h5 file.",
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
        help="Input scaling: caffe, tf ([-1, 1]), torch or none. Default: the built-in model's own; for your "
        "model files, the image converter of a keras-hub model saved with its preprocessor, else none.",
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
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Compute the model in bfloat16 or float32; auto: bf16 where the CPU has AMX or AVX512-BF16, except "
        "for the methods that do not hold up in it (saliency, classviz, hirescam, layercam). Maps and scores are "
        "summed in float32.",
    ),
)
# INPUTS, --batch-size, --max-pixels, --verbose and where batches run: what is read, and how.
input_options = options(
    click.argument("sources", nargs=-1, required=True, metavar="INPUTS..."),
    click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
                 help="Images per model call."),
    click.option("--max-pixels", default=inputs.DEFAULT_MAX_PIXELS, show_default=True,
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


# --top, --json: the predictions printed per image, by the commands that print them.
prediction_options = options(
    click.option("--top", default=5, show_default=True, type=click.IntRange(1),
                 help="Predictions printed per image."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print predictions as JSON lines (default: a table on a terminal, TSV when piped)."),
)


def _shard(value: str | None) -> inputs.Shard | None:
    if value is None:
        return None
    try:
        return inputs.parse_shard(value)
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


def compute_of(step: Callable, classes_of: dict | None = None) -> pipeline.Compute:
    """A pipeline compute step from a compiled step; with `classes_of`, each image's own class goes to it too."""

    def compute(images: Any, batch: list[inputs.Source]) -> Any:
        if classes_of is None:
            return step(images)
        return step(images, np.array([classes_of[source] for source in batch], np.int32))

    return compute


def start(sources: list, make: Callable[[models.LoadedModel], tuple[pipeline.Compute, pipeline.Finish]],
          model: models.LoadedModel, options: dict) -> Any:
    """Run the batch on the chosen engine: here (pipeline.Run) with `make(model)`'s compute and finish steps, or
    on Ray (--engine ray), where each worker loads the model and calls `make` itself."""
    if options.get("engine") == "ray":
        from explain_cli import ray_engine

        load_here = functools.partial(_load, options, model.precision)  # the driver's choice, on every worker
        return ray_engine.RayRun(sources, load_here, make, batch_size=options["batch_size"],
                                 max_pixels=options["max_pixels"], workers=options["workers"],
                                 address=options["ray_address"])
    compute, finish = make(model)
    return pipeline.Run(sources, compute, finish, size=size(model), batch_size=options["batch_size"],
                        max_pixels=options["max_pixels"])


def truth(options: dict, sources: list[inputs.Source], model: models.LoadedModel) -> dict | None:
    """Each source's true class (--truth), or None when not asked for."""
    if not options.get("truth"):
        return None
    from explain_cli import truth

    try:
        return truth.read(options["truth"], sources, model.labels)
    except truth.TruthError as error:
        raise click.BadParameter(str(error), param_hint="--truth") from None


def check_truth_classes(options: dict, sources: list[inputs.Source], truth: dict | None) -> None:
    """`--class truth` explains each image's true class: it needs --truth, for every image, and no other class."""
    if truth is None:
        raise click.BadParameter("--class truth needs --truth folders|FILE.csv", param_hint="--class")
    if len(options["class_specs"]) > 1:
        raise click.BadParameter("truth explains each image's own class: give no other --class", param_hint="--class")
    unknown = [source.shown for source in sources if source not in truth]
    if unknown:
        raise click.BadParameter(f"--class truth: {len(unknown)} images have no truth, first {unknown[0]}",
                                 param_hint="--class")


def tally(sources: list, truth: dict | None, skipped: int = 0) -> console.Tally:
    return console.Tally(len(sources), skipped, truth_given=truth is not None)


def sources(options: dict, skip_dir: Path | None) -> list[inputs.Source]:
    """The inputs, or this shard's share of them (--shard)."""
    found = inputs.discover(options["sources"], sys.stdin, skip_dir)
    if not found:
        raise click.UsageError("no images found in the inputs given")
    shard = options.get("shard")
    return found if shard is None else [source for source in found if shard.takes(source)]


def load(options: dict, methods: Sequence[str] = ()) -> models.LoadedModel:
    """The model the options name, at the precision they ask for, for these methods (said with --verbose)."""
    from explain_cli import precision

    chosen, why = precision.resolve(options.get("precision", "fp32"), methods)
    if options.get("verbose"):
        click.echo(f"note: precision {chosen} ({why})", err=True)
    return _load(options, chosen)


def _load(options: dict, chosen: str) -> models.LoadedModel:
    problem = models.check_spec(options["model_spec"])
    if problem:
        raise click.BadParameter(problem, param_hint="--model")
    for spec in options["imports"]:
        if spec.endswith(".py") and not Path(spec).is_file():
            raise click.BadParameter(f"{spec}: no such file", param_hint="--import")
    return models.load(options["model_spec"], options["weights"], options["labels_file"], options["preprocess"],
                       imports=options["imports"], unsafe=options["unsafe"], precision=chosen)


def resolve_class(model: models.LoadedModel, spec: str) -> int:
    try:
        return model.labels.resolve(spec)
    except ExplainError as error:
        raise click.BadParameter(str(error), param_hint="--class") from None


def size(model: models.LoadedModel) -> tuple[int, int, int]:
    return model.height, model.width, model.channels


def style(options: dict) -> str:
    if options.get("as_json"):
        return "json"
    return "table" if sys.stdout.isatty() else "tsv"


def report(run: pipeline.Run, tally: console.Tally, options: dict, manifest: output.Manifest | None = None,
           side: output.Manifest | None = None) -> None:
    console.report(run, tally, style=style(options), verbose=options["verbose"], batch_size=options["batch_size"],
                   manifest=manifest, side=side)


class Command(click.Command):
    """A command whose run-time failures print one line and exit 1; signals exit 130 (INT) or 143 (TERM)."""

    def invoke(self, ctx: click.Context) -> Any:
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
        except Exception:  # after a signal, whatever a library made of it (see interrupts.received)
            signum = interrupts.received()
            if signum is None:
                raise
            click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            ctx.exit(128 + signum)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def build_report(out_dir: Path, sheet: int = 0) -> None:
    """Build OUT_DIR/report.html (and sheet.png) and say where it is, on stderr."""
    from explain_cli import report

    if not report.manifests(out_dir):
        raise click.BadParameter(f"{out_dir}: no manifest*.jsonl or evaluation.jsonl to build a report from",
                                 param_hint="OUT_DIR")
    with output.writing_into(out_dir):
        page = report.build(out_dir, sheet)
    click.echo(f"report: {page}" + (f" and {out_dir / 'sheet.png'}" if sheet else ""), err=True)


@contextlib.contextmanager
def report_after(make: bool, out_dir: Path) -> Iterator[None]:
    """With --report, build the report once the run has ended, also when some images failed (exit 1)."""
    try:
        yield
    except SystemExit:
        if make:
            build_report(out_dir)
        raise
    if make:
        build_report(out_dir)


def check_class_options(options: dict) -> None:
    if options["class_specs"] and options["top_k"]:
        raise click.UsageError("--class and --top-k are exclusive: explain named classes or the top N")


@dataclass(frozen=True)
class Target:
    """What a run explains: the model cut at its layer, and which classes of which images."""

    layer: str  # the explained layer's full name (checked: make() cuts the model there)
    truth: dict | None  # each source's true class (--truth)
    classes: list[int]  # --class: the same classes for every image (empty: the top k)
    per_image: bool  # --class truth: each image's own true class


def target(options: dict, sources: list[inputs.Source], model: models.LoadedModel) -> Target:
    """The layer and classes a run explains, checked before anything is compiled: usage errors otherwise."""
    from explain_cli import explainer, split

    known = truth(options, sources, model)
    per_image = "truth" in options["class_specs"]
    if per_image:
        check_truth_classes(options, sources, known)
    classes = list(dict.fromkeys(resolve_class(model, spec) for spec in options["class_specs"] if spec != "truth"))
    if options["top_k"] and options["top_k"] > len(model.labels):
        raise click.BadParameter(
            f"{options['top_k']} is more than the model's {len(model.labels)} classes", param_hint="--top-k"
        )
    graph = explainer.graph_of(model)
    if options.get("verbose"):
        for note in graph.notes:
            click.echo(f"note: {model.name}: {note}", err=True)
    default = explainer.default_layer(graph, model)
    try:
        layer = split.check(graph, options["layer"] or default).name
    except ExplainError as error:
        raise click.BadParameter(f"{error}; default: {default}", param_hint="--layer") from None
    return Target(layer, known, classes, per_image)
