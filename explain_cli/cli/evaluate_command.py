"""`explain evaluate`: which map can be trusted, measured on the user's own model and images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from explain_cli.cli import common
from explain_cli.methods import registry

METHOD_NAMES = registry.names()  # every method: a classifier's, a segmentation's or a detector's


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
@common.threshold_option
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
@click.option("--seed", type=int, default=0, show_default=True, help="The random control's noise, and rise's masks.")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True, help="scorecam: masks.")
@common.evaluated_perturbation_options
@common.detection_options
@common.detector_format_options
@click.option("--to", "vectors", type=click.Path(path_type=Path), metavar="FILE",
              help="An embedding model: measure the maps of each image's likeness to these vectors (as `explain "
              "similar --to` reads them) instead of classes.")
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
             skip_existing: bool, make_report: bool, vectors: Path | None, **options: Any) -> None:
    """Measure each method's maps: deletion and insertion AUC, Average Drop, Increase in Confidence, and
    with --boxes the pointing game.

    Writes OUTPUT_DIR/evaluation.jsonl (a line per image, class and method) and evaluation.png (the mean
    deletion and insertion curves); prints each method's means, best first by insertion − deletion.
    """
    from explain_cli.cli import detect_run
    from explain_cli.cli import evaluate_run
    from explain_cli.entry import is_detector
    from explain_cli.settings import EvaluationPlan

    plan = EvaluationPlan(methods, steps, blur_sigma, tolerance, seed, sanity_stages if sanity else 0)
    run = common.run_options(options)
    named = any(options[name] is not None for name in common.DETECTOR_FORMAT)
    if named and options["output_name"]:
        raise click.UsageError(f"--{next(n for n in common.DETECTOR_FORMAT if options[n]).replace('_', '-')} reads an "
                               "object detector's outputs, and --output picks one output of a model that is no "
                               "detector: give one or the other")
    if is_detector(options["model_spec"], options["output_name"], named):  # a detector's detections are evaluated
        if boxes_file or common.class_request(options).specs or options.get("truth"):
            raise click.UsageError("a detector's detections are measured against their own boxes: --boxes, --class "
                                   "and --truth are for classifiers")
        perturbation = common.perturbation_settings(options)
        drise = {name: perturbation[name] for name in ("masks", "cells", "keep") if name in perturbation}
        settings = common.detector_settings(options, "gradcam", batch_size=run.batch_size,
                                            max_pixels=run.max_pixels, **drise)
        detect_run.evaluate(settings, options["sources"], sys.stdin, plan, output_dir, skip_existing, make_report, run,
                            sanity_figures)
        return
    for name in ("min_score", "iou", "max_boxes", *common.DETECTOR_FORMAT):
        options.pop(name)
    settings = common.settings(options, next((m for m in methods if m != "random"), "gradcam"), max_masks=max_masks,
                               seed=seed, **common.perturbation_settings(options))
    request = common.class_request(options)
    if vectors is not None and (boxes_file or sanity or request.specs or request.top_k or request.truth):
        raise click.UsageError("--to measures a likeness alone: --boxes, --sanity, --class, --top-k and --truth are for "
                               "classes")
    evaluate_run.evaluate(settings, options["sources"], sys.stdin, plan, request, boxes_file, sanity_figures,
                          output_dir, skip_existing, make_report, run, vectors)
