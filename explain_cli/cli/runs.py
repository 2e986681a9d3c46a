"""The command line's runs, written on the library: inputs through an Explainer's steps into files, a manifest,
stdout rows and a summary, here or on a Ray cluster.

Each function takes typed values (the command layer parses the options into them) and owns what a run owns beyond
the library: the output folder and its manifest, --skip-existing, --report, and the accounting and exit code
(cli/console.py). A Ray worker makes the same Explainer from its Settings and the same steps as a local run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from explain_cli.cli import console
from explain_cli.io import files as output
from explain_cli.io import nifti
from explain_cli.steps import perturbing
from explain_cli.running import pipeline
from explain_cli.tasks import inspect
from explain_cli.render import heatmaps as render
from explain_cli.explainer import Explainer
from explain_cli.errors import BadArgument, ExplainError
from explain_cli.inputs.sources import DEFAULT_MAX_PIXELS, Shard, Source
from explain_cli.settings import Settings, check


@dataclass(frozen=True)
class RunOptions:
    """How a run reads its inputs and where its batches run."""

    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    verbose: bool = False
    style: str = "tsv"  # stdout: "table" (a terminal), "tsv" (a pipe) or "json"
    engine: str = "local"  # or "ray"
    ray_address: str | None = None
    workers: int | None = None
    shard: Shard | None = None
    inputs: Path | None = None  # a model of several inputs: the CSV of its examples (inputs/several.py)


@dataclass(frozen=True)
class OutputOptions:
    """Where explanations go and how they look."""

    out_dir: Path
    colormap: str = "jet"
    alpha: float = 0.4
    image_format: str = "jpg"
    save_heatmap: bool = False
    figure: bool = False
    report: bool = False
    skip_existing: bool = False
    slices: int = 5  # a volume's montage: slices along each axis; a clip's strip: key frames

    def check(self) -> None:
        """BadArgument for what cannot be drawn: an unknown colormap."""
        if not render.is_colormap(self.colormap):
            raise BadArgument("--colormap", f"unknown matplotlib colormap {self.colormap!r}")

    def render(self, model: str, method: str, layer: str | None, **extra: Any) -> pipeline.RenderOptions:
        """How a run draws and names `method`'s maps of `model` into this folder (`extra`: the entry's listing, floor,
        canvas, ...)."""
        return pipeline.RenderOptions(out_dir=self.out_dir, method=method, layer=layer, model=model,
                                      colormap=self.colormap, alpha=self.alpha, image_format=self.image_format,
                                      save_heatmap=self.save_heatmap, figure=self.figure, slices=self.slices,
                                      **extra)


@dataclass(frozen=True)
class ClassRequest:
    """The classes asked for on the command line: names or numbers, `truth` for each image's own, or a top k."""

    specs: tuple[str, ...] = ()
    top_k: int | None = None
    truth: str | None = None  # --truth: "folders" or a CSV file


def say(line: str) -> None:
    """A line for the user, on stderr."""
    print(line, file=sys.stderr, flush=True)


def sources(arguments: Sequence[str], stdin: TextIO, skip_dir: Path | None, shard: Shard | None,
            grids: bool = False) -> list[Source]:
    """The inputs, or this shard's share of them; with `grids`, the volumes and videos found in folders too, for the
    model to take or leave once it is loaded (Engine.examples_of), else only pictures."""
    from explain_cli.inputs import grids as grid_inputs
    from explain_cli.inputs import sources as inputs

    if not arguments:
        raise BadArgument(None, "no inputs: give images, folders or - (paths on stdin), or --inputs TABLE.csv for a "
                          "model of several inputs")
    found = inputs.discover(arguments, stdin, skip_dir)
    found = found if grids else grid_inputs.pictures_only(found)
    if not found:
        raise BadArgument(None, "no images found in the inputs given")
    return found if shard is None else [source for source in found if shard.takes(source)]


def explainer(settings: Settings, run: RunOptions, found: Sequence[Source] = ()) -> Explainer:
    """The Explainer the settings make; with --verbose, how it was made. BadArgument for a model of several inputs
    given no --inputs table. At int8 with no --calibration, it calibrates on a seeded sample of the files `found`."""
    if settings.precision == "int8" and settings.calibration is None and found:
        from explain_cli.model.quantizing import sample

        files = [str(s.path) for s in found if s.pixels is None and s.grid is None]
        settings = dataclasses.replace(settings, calibration=tuple(sample(files, settings.seed)) or None)
    made = Explainer.from_settings(settings, on_note=listener(Path(settings.model).name, run.verbose))
    if made.held_inputs and run.inputs is None:
        raise BadArgument("--inputs", f"{made.name} takes several inputs ({', '.join(made.input_names)}): give its "
                          "examples as --inputs TABLE.csv, a column per input")
    return made


def listener(name: str, verbose: bool) -> Callable[[str, bool], None]:
    """Says a model's notes as they come: its warnings always, the rest with --verbose."""

    def hear(note: str, warning: bool) -> None:
        if warning:
            say(f"warning: {name}: {note}")
        elif verbose:
            say(f"note: {note}" if note.startswith("precision ") else f"note: {name}: {note}")

    return hear


def truth(spec: str | None, found: Sequence[Source], made: Explainer) -> dict | None:
    """Each source's true class (--truth), or None when not asked for."""
    if not spec:
        return None
    from explain_cli.inputs import truth as truth_module

    return truth_module.read(spec, found, made.label_set, several=made.listing.kind == "labels")


def choice(request: ClassRequest, found: Sequence[Source], made: Explainer, known: dict | None,
           evaluating: bool = False) -> Any:
    """The ClassChoice of a run; `truth` explains each image's true class, and needs truth for every image."""
    if request.specs and request.top_k:
        raise BadArgument(None, "--class and --top-k are exclusive: explain named classes or the top N")
    if "truth" not in request.specs:
        return made.choose(list(request.specs) or None, request.top_k, evaluating)
    if known is None:
        raise BadArgument("--class", "--class truth needs --truth folders|FILE.csv")
    if len(request.specs) > 1:
        raise BadArgument("--class", "truth explains each image's own class: give no other --class")
    if any(isinstance(labels, frozenset) for labels in known.values()):
        raise BadArgument("--class", "truth explains one class per image, and these truths are sets of labels: "
                          "explain the labels predicted, or name them with --class")
    unknown = [source.shown for source in found if source not in known]
    if unknown:
        raise BadArgument("--class", f"--class truth: {len(unknown)} images have no truth, first {unknown[0]}")
    return made.choose({source.key: cls for source, cls in known.items()})


def start(found: list[Source], make: Callable[[Any], tuple[pipeline.Compute, pipeline.Finish]], made: Any,
          run: RunOptions, load: Callable[[], Any] | None = None) -> Any:
    """The run on the chosen engine: here (pipeline.Run), or on Ray, where each worker makes its own `made` with `load`
    (default: the Explainer from `made`'s settings), then its steps with `make`."""
    if run.engine == "ray":
        from explain_cli.cli import ray_engine

        if load is None:
            settings = dataclasses.replace(made.settings, precision=made.precision)  # the driver's choice, everywhere
            if not settings.model:
                raise ExplainError("--engine ray needs a model a worker can load: a built-in name or a file")
            load = functools.partial(Explainer.from_settings, settings)
        return ray_engine.RayRun(found, load, make, batch_size=run.batch_size, max_pixels=run.max_pixels,
                                 workers=run.workers, address=run.ray_address)
    compute, finish = steps_of(make, made)
    return pipeline.Run(found, compute, finish, size=made.input_shape, resize=made.resize,
                        display=made.display_channels, batch_size=run.batch_size,
                        max_pixels=run.max_pixels)


def steps_of(make: Callable[[Any], tuple[pipeline.Compute, pipeline.Finish]],
             made: Any) -> tuple[pipeline.Compute, pipeline.Finish]:
    """The run's compute and finish steps from `make`; a batch of volumes (the model's input as they stand, float32)
    computed by the steps `made.as_input()` makes, pictures by its own."""
    compute, finish = make(made)
    if not getattr(made, "takes_grids", False):
        return compute, finish
    return pipeline.by_reading(lambda given: make(made.as_input())[0] if given else compute), finish


def report(started: Any, tally: console.Tally, run: RunOptions, manifest: output.Manifest | None = None,
           side: output.Manifest | None = None) -> None:
    console.report(started, tally, style=run.style, verbose=run.verbose, batch_size=run.batch_size,
                   manifest=manifest, side=side)


def tally(found: Sequence[Source], known: dict | None, skipped: int = 0, made: Explainer | None = None) -> console.Tally:
    several = made is not None and made.listing.kind == "labels"
    return console.Tally(len(found), skipped, truth_given=known is not None,
                         labels=made.labels if several and made else (),
                         threshold=made.settings.threshold if made else 0.5)


def unexplained(found: list[Source], out: OutputOptions, method: str) -> tuple[list[Source], int]:
    """With --skip-existing, the sources OUT_DIR's manifest has not explained by `method` (the temporary files of runs
    no longer alive removed), and how many it has; without, all of them."""
    if not out.skip_existing:
        return found, 0
    done = output.explained_images(out.out_dir, method)
    if out.out_dir.is_dir():
        output.remove_stale_temporaries(out.out_dir)
    return skip_done(found, out.out_dir, done)


def skip_done(found: list[Source], out_dir: Path, done: set[str]) -> tuple[list[Source], int]:
    """The sources not yet done (--skip-existing), and how many were."""
    todo = [s for s in found if s.shown not in done]
    return todo, len(found) - len(todo)


@contextlib.contextmanager
def manifest_in(out_dir: Path, name: str, shard: Shard | None) -> Iterator[output.Manifest]:
    """The run's record file, opened before the model loads (an unwritable folder fails at once), closed after. A run
    that ends in an error before it wrote a line (a model refused, a usage error) leaves nothing behind: the file and
    the folders it made are removed."""
    made = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    path = out_dir / output.record_file(name, shard)
    new = not path.exists()
    with output.writing_into(out_dir):
        manifest = output.Manifest(out_dir, path.name)
    try:
        yield manifest
    except BaseException:
        if new and path.stat().st_size == 0:
            path.unlink()
            for folder in made:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        manifest.close()


def build_report(out_dir: Path, sheet: int = 0) -> None:
    """Build OUT_DIR/report.html (and sheet.png) and say where it is, on stderr."""
    from explain_cli.io import report as report_module

    if not report_module.manifests(out_dir):
        raise BadArgument("OUT_DIR", f"{out_dir}: no manifest*.jsonl or evaluation.jsonl to build a report from")
    with output.writing_into(out_dir):
        page = report_module.build(out_dir, sheet)
    say(f"report: {page}" + (f" and {out_dir / 'sheet.png'}" if sheet else ""))


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


# --- the commands' runs ------------------------------------------------------------------------------------------


def explain(settings: Settings, arguments: Sequence[str], stdin: TextIO, request: ClassRequest, top: int,
            out: OutputOptions, run: RunOptions, name: str | None = None, grey_map: bool = False) -> None:
    """explain gradcam / cam / saliency: each input's explanations written into OUT_DIR, a manifest line each, the
    predictions on stdout. `name` names the method in files and the manifest."""
    check(settings)
    name = name or settings.method + ("-counterfactual" if settings.counterfactual else "")
    out.check()
    if request.specs and request.top_k:
        raise BadArgument(None, "--class and --top-k are exclusive: explain named classes or the top N")
    if run.inputs is not None:
        from explain_cli.cli import several_run

        return several_run.explain(settings, request, top, out, run, name, grey_map)
    found, skipped = unexplained(sources(arguments, stdin, out.out_dir, run.shard, grids=True), out, name)
    if not found:  # nothing left to do: no need to load a model for it
        say(console.Tally(0, skipped=skipped).summary(None))
        return
    with manifest_in(out.out_dir, output.MANIFEST, run.shard) as manifest:
        made = explainer(settings, run, found)
        found = made.examples_of(found)  # a model of volumes or clips: videos cut into clips, frames into one
        if any(s.grid is not None and s.grid.kind == "volume" for s in found) and not nifti.available():
            say(f"warning: volumes' maps are drawn but not written as NIfTI: {nifti.EXTRA}")
        known = truth(request.truth, found, made)
        chosen = choice(request, found, made, known)
        made.check_method(name)
        say(f"{made.name}: {name} " + (f"at layer {made.layer}" + ("" if settings.layer else " (default)")
                                        if made.layer_for(name) else perturbing.describe(name, made.settings,
                                                                                          *made.input_shape[:-1])))
        options = out.render(made.name, name, made.layer_for(name), grey_map=grey_map, listing=made.listing,
                             floor=chosen.floor, canvas=made.canvas)

        def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
            return worker.compute(chosen), pipeline.explanations(worker.labels, top, options, known)

        started = start(found, make, made, run)
        with report_after(out.report, out.out_dir):
            report(started, tally(found, known, skipped, made), run, manifest)


def segment(settings: Settings, arguments: Sequence[str], stdin: TextIO, request: ClassRequest, top: int,
            out: OutputOptions, run: RunOptions, box: tuple[float, float, float, float] | None = None,
            masks: Path | None = None, truth_masks: Path | None = None) -> None:
    """explain segment: each input's segmentation (its classes coloured over it), each class present on
    --min-area of it explained (a map of what raised the class's scores over where it is predicted, or over a box or
    a mask given), a manifest line each; its classes on stdout; with true masks, the IoU."""
    from explain_cli.tasks import segment as segmenting

    check(settings)
    name = settings.method + ("-counterfactual" if settings.counterfactual else "")
    out.check()
    if request.specs and request.top_k:
        raise BadArgument(None, "--class and --top-k are exclusive: explain named classes or the top N")
    for option, folder in (("--region-masks", masks), ("--truth-masks", truth_masks)):
        if folder is not None and not folder.is_dir():
            raise BadArgument(option, f"{folder}: no such folder")
    found = sources(arguments, stdin, out.out_dir, run.shard, grids=True)
    with manifest_in(out.out_dir, output.MANIFEST, run.shard) as manifest:
        made = explainer(settings, run, found)
        made.check_segmenter()
        found = made.examples_of(found)  # a segmenter of volumes: each NIfTI, DICOM series, TIFF stack or .npy
        given = [o for o, v in (("--region", box), ("--region-masks", masks), ("--truth-masks", truth_masks)) if v]
        if made.takes_grids and given:
            raise BadArgument(given[0], "is for pictures: a segmenter of volumes explains each class over its voxels")
        chosen = choice(request, found, made, None)
        where = f"at layer {made.layer}" + ("" if settings.layer else " (default)") if made.layer_for(name) else \
            perturbing.describe(name, made.settings, *made.input_shape[:-1])
        say(f"{made.name}: {name} {where}" + (", over --region" if box else ", over --region-masks" if masks else ""))
        options = out.render(made.name, name, made.layer_for(name), listing=made.listing, floor=chosen.floor,
                             canvas=made.canvas)
        height, width, _ = made.input_size

        def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
            missing: set[str] = set()
            regions_of = segmenting.regions(box, masks, height, width, worker.canvas) if box or masks else None

            def regions(batch_sources: list[Source]) -> tuple[Any, list[str]]:
                assert regions_of is not None
                found_regions, absent = regions_of(batch_sources)
                missing.update(absent)
                return found_regions, absent

            compute = worker.compute(chosen, regions=regions if regions_of else None)
            return compute, segmenting.finish_step(worker.labels, top, options, truth_masks,
                                                   lambda source: source.shown in missing)

        started = start(found, make, made, run)
        counted = dataclasses.replace(tally(found, None), labels=made.labels if truth_masks else ())
        with report_after(out.report, out.out_dir):
            report(started, counted, run, manifest)


def predict(settings: Settings, arguments: Sequence[str], stdin: TextIO, truth_spec: str | None, top: int,
            run: RunOptions) -> None:
    """explain predict: each input's top predictions on stdout, nothing written."""
    if run.inputs is not None:  # a table of a model of several inputs: read once the model says its inputs
        made = explainer(settings, run)
        found = made.examples_from(run.inputs)
    else:
        found = sources(arguments, stdin, None, run.shard, grids=True)
        made = explainer(settings, run, found)
        found = made.examples_of(found)
    known = truth(truth_spec, found, made)

    def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
        return worker.prediction_step(), pipeline.predictions_only(worker.labels, top, known, worker.listing)

    report(start(found, make, made, run), tally(found, known, 0, made), run)


def activations(settings: Settings, arguments: Sequence[str], stdin: TextIO, layers: Sequence[str],
                max_layers: int, max_channels: int, out_dir: Path, run: RunOptions) -> None:
    """explain activations: each input's channel grids of the layers asked for (or spread through the model)."""
    found = sources(arguments, stdin, out_dir, run.shard)
    made = explainer(settings, run, found)
    drawn, available = made.activation_layers(layers, max_layers)
    if not layers and available > len(drawn):
        say(f"{made.name}: {available} convolution and pooling layers; drawing {len(drawn)} spread evenly "
            "(--layer to choose, --max-layers for more)")
    model_name = made.name

    def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
        return worker.activation_step(drawn), inspect.activation_grids(out_dir, drawn, max_channels, model_name)

    with manifest_in(out_dir, output.MANIFEST, run.shard) as manifest:
        report(start(found, make, made, run), console.Tally(len(found)), run, manifest)


def layers(settings: Settings) -> None:
    """explain layers: the layer outputs a method can explain, one a line, * marking the default."""
    made = Explainer.from_settings(settings)
    rows = [(layer.name, layer.detail, "*" if layer.default else " ") for layer in made.layers()]
    if len(made.outputs) > 1:  # the outputs to choose from with --output, marked >
        rows += [(layer.name, layer.detail, ">") for layer in made.output_layers()]
    width = max((len(name) for name, _, _ in rows), default=0)
    for name, shape, mark in rows:
        sys.stdout.write(f"{mark} {name:<{width}}  {shape}\n")


def classviz(settings: Settings, class_spec: str, viz: Any, every: int, out_dir: Path, run: RunOptions) -> None:
    """explain classviz: the image the model finds most CLASS-like, written with its manifest lines; its path on
    stdout."""
    made = explainer(dataclasses.replace(settings, precision_for=("classviz",)), run)
    seen = made.classviz(class_spec, viz, every)
    class_index, label, logits = seen.class_index, seen.label, seen.logits
    final, snapshots = seen.picture, seen.snapshots
    stem = f"classviz.{class_index}-{output.safe_label(label)}"
    written = [(step, f"{stem}.step{step:04d}.png", picture) for step, picture in snapshots]
    written.append((viz.steps, f"{stem}.png", final))
    files = output.FileSet(out_dir)
    with files.complete_or_removed():
        for _, name, picture in written:
            files.write(name, render.encode(picture, "png"))
        with manifest_in(out_dir, output.MANIFEST, None) as manifest:  # logits[i] is the logit after step i
            manifest.append([{"model": made.name, "method": "classviz", "class_index": class_index, "label": label,
                              "step": step, "logit": logits[step], "file": name} for step, name, _ in written])
    say(f"{made.name}: class {class_index} ({label}) logit {logits[0]:.3f} → {logits[-1]:.3f} in {viz.steps} steps")
    sys.stdout.write(f"{out_dir / stem}.png\n")
