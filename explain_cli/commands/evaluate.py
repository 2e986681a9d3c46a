"""`explain evaluate`: which map can be trusted, measured on the user's own model and images."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from explain_cli import evaluate as evaluation, output, render
from explain_cli.commands import common
from explain_cli.methods import METHODS
from explain_cli.methods.saliency import PIXEL_METHODS

METHOD_NAMES = (*METHODS, *PIXEL_METHODS, evaluation.RANDOM)


def _methods(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}"
                                 if unknown else "name at least one method")
    return names


@click.command(cls=common.Command)
@common.input_options
@click.option("--json", "as_json", is_flag=True, help="Print each method's means as JSON lines, with their 95 % "
              "bootstrap intervals (default: a table on a terminal, TSV when piped).")
@common.truth_option
@common.model_options
@click.option("--methods", default="gradcam,random", show_default=True, callback=_methods, metavar="M1,M2,...",
              help=f"Methods to measure, comma-separated: any of {', '.join(METHOD_NAMES)} (random: seeded "
              "uniform noise, the control).")
@common.target_options
@click.option("--steps", type=click.IntRange(1), default=32, show_default=True,
              help="Deletion and insertion: N steps, N + 1 forward passes each.")
@click.option("--blur-sigma", type=click.FloatRange(0.0, min_open=True), default=5.0, show_default=True,
              help="Insertion starts from the image blurred by a Gaussian of this σ (input pixels).")
@click.option("--boxes", "boxes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV image,x0,y0,x1,y1[,class] (original pixels, x1 and y1 exclusive): adds the pointing game "
              "and the energy in the boxes.")
@click.option("--tolerance", type=click.FloatRange(0.0), default=15.0, show_default=True,
              help="Pointing game: a hit within this many pixels of a box.")
@click.option("--seed", type=int, default=0, show_default=True, help="The random control's noise.")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True, help="scorecam: masks.")
@click.option("--sanity", is_flag=True,
              help="Cascading randomisation (Adebayo et al. 2018): randomise a copy of the model from the logits down "
              "and report how each method's maps change (Spearman), in sanity.jsonl and on stderr.")
@click.option("--sanity-stages", type=click.IntRange(1), default=6, show_default=True,
              help="--sanity: stages, spread evenly from the logits layer to all weighted layers.")
@click.option("--sanity-figures", type=click.IntRange(0), default=3, show_default=True,
              help="--sanity: images that get a figure of their maps across the stages (<stem>.sanity.png).")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("explanations"),
              show_default=True, help="Where evaluation.jsonl and evaluation.png are written.")
@click.option("--skip-existing", is_flag=True, help="Skip images that OUTPUT_DIR/evaluation.jsonl has for every method.")
@click.option("--report", "make_report", is_flag=True, help="Build OUTPUT_DIR/report.html when the run ends.")
def evaluate(methods: tuple[str, ...], steps: int, blur_sigma: float, boxes_file: Path | None, tolerance: float,
             seed: int, max_masks: int, sanity: bool, sanity_stages: int, sanity_figures: int, output_dir: Path,
             skip_existing: bool, make_report: bool, **options: Any) -> None:
    """Measure each method's maps: deletion and insertion AUC, Average Drop, Increase in Confidence, and
    with --boxes the pointing game.

    Writes OUTPUT_DIR/evaluation.jsonl (a line per image, class and method) and evaluation.png (the mean
    deletion and insertion curves); prints each method's means, best first by insertion − deletion.
    """
    common.check_class_options(options)
    sources = common.sources(options, skip_dir=output_dir)
    all_shown = {s.shown for s in sources}
    skipped = 0
    if skip_existing:
        done = set.intersection(*(output.explained_images(output_dir, m, evaluation.RECORDS) for m in methods))
        todo = [s for s in sources if s.shown not in done]
        skipped, sources = len(sources) - len(todo), todo
    with output.writing_into(output_dir):
        records_file = output.Manifest(output_dir, output.record_file(evaluation.RECORDS, options["shard"]))
        sanity_file = output.Manifest(output_dir, output.record_file(evaluation.SANITY_RECORDS, options["shard"])) \
            if sanity else None
    try:
        model = common.load(options, methods)
        target = common.target(options, sources, model)
        truth, per_image, classes, layer = target.truth, target.per_image, target.classes, target.layer
        boxes = _boxes(boxes_file, sources, model)
        settings = evaluation.Settings(methods, steps, blur_sigma, tolerance, seed, options["batch_size"])
        click.echo(f"{model.name}: evaluating {', '.join(methods)} at layer {layer}, {steps} steps: "
                   f"{len(methods) * (2 * steps + 3)} forward passes per image and class", err=True)
        real = [m for m in methods if m != evaluation.RANDOM]
        figures = sources[:sanity_figures]
        k = 1 if per_image else len(classes) or options["top_k"] or 1

        def choose(probabilities: np.ndarray, batch: list) -> np.ndarray:
            if per_image:
                return np.array([[truth[s]] for s in batch])
            if classes:
                return np.broadcast_to(np.array(classes), (len(probabilities), len(classes)))
            return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]

        def make(loaded: Any) -> tuple[Any, Any]:  # on each Ray worker too: it captures plain values only
            from explain_cli import explainer, split

            graph = explainer.graph_of(loaded)
            at = split.split(graph, layer)
            explainers = {m: _explainer(loaded, graph, at, m, max_masks) for m in real}
            checks = _sanity(loaded, layer, real, sanity_stages, seed, max_masks, figures, output_dir) \
                if sanity else None
            compute = evaluation.evaluation_step(explainer.compile_predict(loaded, graph),
                                                 explainer.compile_predict(loaded, graph, "float32"), explainers,
                                                 choose, settings, checks)
            return compute, evaluation.finish_step(loaded.labels.names, loaded.name, layer, settings, truth, boxes,
                                                   checks)

        run = common.start(sources, make, model, options)
        status = 0
        try:
            tally = dataclasses.replace(common.tally(sources, truth, skipped), records="evaluations")
            common.report(run, tally, options, records_file, sanity_file)
        except SystemExit as stop:  # some images failed: the others are still summed up
            status = stop.code
        _summarise(output_dir, methods, all_shown, options)
        if sanity:
            _summarise_sanity(output_dir, methods, all_shown)
        if make_report:
            common.build_report(output_dir)
        if status:
            raise SystemExit(status)
    finally:
        records_file.close()
        if sanity_file is not None:
            sanity_file.close()


def _sanity(model: Any, layer: str, methods: list[str], stages: int, seed: int, max_masks: int, figures: list,
            out_dir: Path) -> evaluation.Sanity:
    from explain_cli import randomise

    cascade = randomise.cascade(model, stages, seed)
    click.echo(f"{model.name}: --sanity randomises a copy in {len(cascade.stages)} stages, down to "
               f"{cascade.stages[-1][0]} weighted layers", err=True)
    explainers = randomise.explainers_for(
        cascade, layer, methods, lambda copy, graph, cut, m: _explainer(copy, graph, cut, m, max_masks))
    return evaluation.Sanity(cascade, explainers, frozenset(figures), out_dir)


def _summarise_sanity(out_dir: Path, methods: tuple[str, ...], shown: set[str]) -> None:
    """The mean Spearman correlation with the trained model's maps, per method and stage, on stderr."""
    records = [r for r in output.read_records(out_dir, evaluation.SANITY_RECORDS) if r.get("image") in shown]
    stages = sorted({(r["stage"], r["layers_randomised"]) for r in records})
    if not stages:
        return
    width = max(len(m) for m in methods + ("method",))
    header = "sanity: mean Spearman of each method's maps with the trained model's, by layers randomised"
    lines = [header, f"  {'method':<{width}}" + "".join(f"{count:>8}" for _, count in stages)]
    for method in methods:
        means = [np.mean([r["spearman"] for r in records if r["method"] == method and r["stage"] == stage] or [np.nan])
                 for stage, _ in stages]
        lines.append(f"  {method:<{width}}" + "".join(f"{m:8.3f}" for m in means))
    click.echo("\n".join(lines), err=True)


def _explainer(model: Any, graph: Any, cut: Any, method: str, max_masks: int) -> Any:
    from explain_cli import explainer

    if method in METHODS:
        return explainer.compile_explain(model, cut, method, max_masks=max_masks, per_image=True)
    return explainer.compile_saliency(model, graph, method, layer=cut.layer, per_image=True)


def _boxes(path: Path | None, sources: list, model: Any) -> dict | None:
    if path is None:
        return None
    from explain_cli import truth

    try:
        return evaluation.read_boxes(path, sources, model.labels)
    except truth.TruthError as error:
        raise click.BadParameter(str(error), param_hint="--boxes") from None


def _summarise(out_dir: Path, methods: tuple[str, ...], shown: set[str], options: dict) -> None:
    """Every record of these images and methods (this run's and, with --skip-existing, earlier ones): the
    per-method means on stdout, and the mean curves as evaluation.png."""
    records = [r for r in output.read_records(out_dir, evaluation.RECORDS) if r.get("image") in shown]
    summaries = [s for s in evaluation.summarise(records, methods) if s.images]
    if not summaries:
        return
    sys.stdout.write(evaluation.format_summary(summaries, common.style(options)))
    sys.stdout.flush()
    files = output.FileSet(out_dir)
    files.write(evaluation.SUMMARY_FIGURE, render.curves_figure(evaluation.mean_curves(records, methods)))
