"""`explain detect`'s run: inputs through a Detector's steps into files, a manifest, stdout rows and a summary."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.errors import BadArgument, ExplainError
from explain_cli.settings import DetectorSettings
from explain_cli.cli.runs import (OutputOptions, RunOptions, build_report, listener, manifest_in, report, report_after,
                              say, sources, start, unexplained)

def run(settings: DetectorSettings, arguments: Sequence[str], stdin: TextIO, truth_file: Path | None,
        out: OutputOptions, run_options: RunOptions) -> None:
    """explain detect: each input's detections drawn, each detection explained, a manifest line each; the detections
    on stdout; with true boxes, precision, recall and mAP@0.5."""
    from explain_cli.cli import console
    from explain_cli.tasks import detection_listing as detect_output
    from explain_cli.evaluation import evaluate
    from explain_cli.tasks.detections import explanations

    from explain_cli.detector import default_method

    out.check()
    method = settings.method or default_method(settings.model)
    found, skipped = unexplained(sources(arguments, stdin, out.out_dir, run_options.shard), out, method)
    if not found:  # nothing left to do: no need to load a model for it
        say(console.Tally(0, skipped=skipped).summary(None))
        return
    with manifest_in(out.out_dir, output.MANIFEST, run_options.shard) as manifest:
        made, load = _detector(settings, run_options.verbose)
        truth = None
        if truth_file is not None:
            truth = detect_output.truth_boxes(evaluate.read_boxes(truth_file, found, made.label_set))
        layer = made.layer_for(method)
        where = f"at layer {layer}" + ("" if settings.layer else " (default)") if layer else (
            f"{made.drise_masks[0]} masks of {made.drise_masks[1]} × {made.drise_masks[1]} cells, forward "
            "passes only" if method == "drise" else "seeded noise")
        say(f"{made.name}: {method} {where}; detections at score ≥ {made.min_score:g}, IoU {made.format.iou:g}, "
            f"at most {made.max_boxes} per image")
        options = out.render(made.name, method, layer)
        started = start(found, lambda made: (made.compute(), detect_output.finish_step(made, options, truth,
                                                                                       explanations)),
                        made, run_options, load)
        tally = console.Tally(len(found), skipped, records="explained detections", labels=made.labels)
        with report_after(out.report, out.out_dir):
            report(started, tally, run_options, manifest)


def evaluate(settings: DetectorSettings, arguments: Sequence[str], stdin: TextIO, plan: Any, out_dir: Path,
             skip_existing: bool, make_report: bool, run_options: RunOptions, sanity_figures: int = 0) -> None:
    """explain evaluate on an object detector: a record per image, detection and method in evaluation.jsonl (and with
    --sanity, per stage in sanity.jsonl), the means on stdout."""
    from explain_cli.evaluation import detections as detect_evaluate
    from explain_cli.cli import evaluate_run
    from explain_cli.evaluation import evaluate as evaluation

    detect_evaluate.check(plan.methods)
    found, all_shown, skipped = evaluate_run.evaluation_inputs(arguments, stdin, out_dir, run_options.shard, plan.methods,
                                                       skip_existing)
    with manifest_in(out_dir, evaluation.RECORDS, run_options.shard) as records, contextlib.ExitStack() as stack:
        side = stack.enter_context(manifest_in(out_dir, evaluation.SANITY_RECORDS, run_options.shard)) \
            if plan.sanity_stages else None
        first = next((m for m in plan.methods if m not in ("drise", "random")), "drise")
        try:
            made, load = _detector(replace(settings, method=first, seed=plan.seed, precision_for=plan.methods),
                                   run_options.verbose)
        except BadArgument:
            raise
        except ExplainError as error:  # two outputs that are no detector's: a classifier's, one to be chosen
            raise ExplainError(f"{error}; a model of several outputs that is no detector: name one with --output") \
                from None
        layered = [m for m in plan.methods if made.layer_for(m)]
        say(f"{made.name}: evaluating {', '.join(plan.methods)}" + (f" at layer {made.layer}" if layered else "") +
            f" on each detection, {plan.steps} steps: {metrics.passes_of_maps(len(plan.methods), plan.steps)} forward "
            "passes per detection, plus the curves' ends once an image")
        measured = evaluation.Settings(plan.methods, plan.steps, plan.blur_sigma, plan.tolerance, plan.seed,
                                       run_options.batch_size)
        figures = frozenset(found[:sanity_figures])

        def make(made: Any) -> tuple[Any, Any]:
            sanity = made.sanity(plan.sanity_stages, figures, out_dir, say) \
                if plan.sanity_stages else None
            return (detect_evaluate.evaluation_step(made, measured, sanity),
                    detect_evaluate.finish_step(made, measured, sanity))

        started = start(found, make, made, run_options, load)
        status = 0
        try:
            from explain_cli.cli import console

            report(started, console.Tally(len(found), skipped, records="evaluations"), run_options, records, side)
        except SystemExit as stop:
            status = int(stop.code or 0)
        evaluate_run.summarise(out_dir, plan.methods, all_shown, run_options.style)
        if plan.sanity_stages:
            evaluate_run.summarise_sanity(out_dir, plan.methods, all_shown)
        if make_report:
            build_report(out_dir)
        if status:
            raise SystemExit(status)


def _detector(settings: DetectorSettings, verbose: bool) -> tuple[Any, Callable[[], Any]]:
    """The run's Detector, saying its notes, and how a Ray worker makes its own: the same settings at the precision
    the driver chose, so an `auto` resolves alike on every node."""
    from explain_cli.detector import Detector

    made = Detector.from_settings(settings, on_note=listener(Path(settings.model).name, verbose))
    return made, functools.partial(Detector.from_settings, replace(settings, precision=made.precision))
