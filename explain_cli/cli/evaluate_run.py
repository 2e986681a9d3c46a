"""`explain evaluate`'s run, written on the library: a record per image, class and method in evaluation.jsonl, the
sanity cascade's in sanity.jsonl, and each method's means on stdout with the mean curves as evaluation.png."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.running import pipeline
from explain_cli.render import heatmaps as render
from explain_cli.explainer import Explainer
from explain_cli.errors import BadArgument
from explain_cli.inputs.sources import Shard, Source
from explain_cli.cli.runs import (ClassRequest, RunOptions, build_report, choice, explainer, manifest_in, report, say,
                              skip_done, sources, start, tally, truth)
from explain_cli.settings import EvaluationPlan, Settings


def evaluate(settings: Settings, arguments: Sequence[str], stdin: TextIO, plan: EvaluationPlan,
             request: ClassRequest, boxes_file: Path | None, sanity_figures: int, out_dir: Path, skip_existing: bool,
             make_report: bool, run: RunOptions, vectors: Path | None = None) -> None:
    """explain evaluate: each method's maps measured, a record per image, class and method in evaluation.jsonl,
    the means on stdout (with every earlier record of these images under --skip-existing)."""
    from explain_cli.evaluation import evaluate as evaluation

    if request.specs and request.top_k:
        raise BadArgument(None, "--class and --top-k are exclusive: explain named classes or the top N")
    found, all_shown, skipped = evaluation_inputs(arguments, stdin, out_dir, run.shard, plan.methods, skip_existing)
    with manifest_in(out_dir, evaluation.RECORDS, run.shard) as records, contextlib.ExitStack() as stack:
        side = stack.enter_context(manifest_in(out_dir, evaluation.SANITY_RECORDS, run.shard)) \
            if plan.sanity_stages else None
        made = explainer(dataclasses.replace(settings, precision_for=plan.methods), run, found)
        found = made.examples_of(found)  # a model of volumes or clips: videos cut into clips, frames into one
        all_shown |= {source.shown for source in found}  # and named so
        likeness = _likeness(made, plan, vectors) if vectors is not None else None
        known = truth(request.truth, found, made)
        chosen = choice(request, found, made, known, evaluating=True) if likeness is None else None
        boxes = evaluation.read_boxes(boxes_file, found, made.label_set) if boxes_file else None
        for method in plan.methods:
            made.check_method(method)
        layered = any(made.layer_for(m) for m in plan.methods)
        say(f"{made.name}: evaluating {', '.join(plan.methods)}" + (f" at layer {made.layer}" if layered else "") +
            f", {plan.steps} steps: "
            f"{metrics.passes_of_maps(len(plan.methods), plan.steps)} forward passes per image and class, plus the "
            "curves' ends once an image")
        figures = found[:sanity_figures]

        def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
            if likeness is not None:  # --to: the maps of each image's likeness to the vectors
                steps, finish = worker.likeness_steps(plan, likeness)
                return steps(worker), finish
            return worker.evaluation_steps(plan, chosen, known, boxes, figures, out_dir, say)

        started = start(found, make, made, run)
        status = 0
        try:
            counted = dataclasses.replace(tally(found, known, skipped, made), records="evaluations")
            report(started, counted, run, records, side)
        except SystemExit as stop:  # some images failed: the others are still summed up
            status = stop.code
        summarise(out_dir, plan.methods, all_shown, run.style)
        if plan.sanity_stages:
            summarise_sanity(out_dir, plan.methods, all_shown)
        if make_report:
            build_report(out_dir)
        if status:
            raise SystemExit(status)


def _likeness(made: Explainer, plan: EvaluationPlan, vectors: Path) -> Any:
    """--to: the references (tasks/similar.References) each image's likeness is measured against."""
    from explain_cli.tasks import similar

    made.check_embedder()
    return similar.references_in(vectors, made.embedding_size)


def evaluation_inputs(arguments: Sequence[str], stdin: TextIO, out_dir: Path, shard: Shard | None,
                      methods: Sequence[str], skip_existing: bool) -> tuple[list[Source], set[str], int]:
    """An evaluation's sources (with --skip-existing, those evaluation.jsonl lacks for some method), every source's
    name as shown, and how many were skipped."""
    from explain_cli.evaluation import evaluate as evaluation

    found = sources(arguments, stdin, out_dir, shard, grids=True)
    shown = {s.shown for s in found}
    if not skip_existing:
        return found, shown, 0
    done = set.intersection(*(output.explained_images(out_dir, m, evaluation.RECORDS) for m in methods))
    todo, skipped = skip_done(found, out_dir, done)
    return todo, shown, skipped


def summarise(out_dir: Path, methods: tuple[str, ...], shown: set[str], style: str) -> None:
    """Every record of these images and methods (this run's and, with --skip-existing, earlier ones): the
    per-method means on stdout, and the mean curves as evaluation.png."""
    from explain_cli.evaluation import evaluate as evaluation

    records = [r for r in output.read_records(out_dir, evaluation.RECORDS) if r.get("image") in shown]
    summaries = [s for s in evaluation.summarise(records, methods) if s.images]
    if not summaries:
        return
    sys.stdout.write(evaluation.format_summary(summaries, style))
    sys.stdout.flush()
    files = output.FileSet(out_dir)
    files.write(evaluation.SUMMARY_FIGURE, render.curves_figure(evaluation.mean_curves(records, methods)))


def summarise_sanity(out_dir: Path, methods: tuple[str, ...], shown: set[str]) -> None:
    """The mean Spearman correlation with the trained model's maps, per method and stage, on stderr."""
    import numpy as np

    from explain_cli.evaluation import evaluate as evaluation

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
    say("\n".join(lines))
