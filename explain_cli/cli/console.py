"""What a run tells its user as it goes, and the accounting behind it.

stdout gets data only (predictions); stderr gets errors, warnings, notes, the summary and, on a
terminal, a live progress bar (rich) that stays below every line printed. Each image is accounted
once, whatever stops the run (an interrupt, a closed stdout, a full disk): its manifest lines and
its count in the summary are written together, and the images that were finished but not yet
printed when the run stopped are accounted too, so the summary always equals the manifest.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain_cli.running import interrupts
from explain_cli.evaluation import metrics
from explain_cli.io import files as output
from explain_cli.errors import ExplainError
from explain_cli.running.pipeline import ImageResult, Run


@dataclass
class Tally:
    """What the summary line says."""

    total: int
    skipped: int = 0  # already explained (--skip-existing)
    done: int = 0
    explained: int = 0  # manifest lines written
    failed: list[str] = field(default_factory=list)
    records: str = "explanations"  # what the manifest's lines are, in the summary
    truth_given: bool = False  # --truth: accuracy is summed up, and JSON rows say each image's truth
    with_truth: int = 0  # images done whose truth is known
    top1: int = 0  # ... and predicted right
    top5: int = 0  # ... and among the five most probable
    labels: tuple[str, ...] = ()  # several labels per image: their names, to sum each up
    threshold: float = 0.5  # ... and the probability a label is predicted at
    label_rows: list = field(default_factory=list)  # ... (each label's probability, the true set) per image
    both: Any = None  # a segmentation with true masks: per class, the pixels in both (summed over the images)
    either: Any = None  # ... and in either
    with_masks: int = 0  # ... over this many images
    detections: list = field(default_factory=list)  # a detector with true boxes: every detection (boxes.Found)
    true_boxes: dict = field(default_factory=dict)  # ... and each image's true (class, box) pairs

    def count(self, result: ImageResult) -> None:
        self.done += 1
        if result.overlap is not None:
            both, either = result.overlap
            self.both = both if self.both is None else self.both + both
            self.either = either if self.either is None else self.either + either
            self.with_masks += 1
        if result.detected is not None:
            found, true = result.detected
            self.detections.extend(found)
            self.true_boxes[result.source.key] = true
        if isinstance(result.truth, frozenset) and result.shown is not None:
            self.label_rows.append((result.shown, result.truth))
        elif result.truth_rank is not None:
            self.with_truth += 1
            self.top1 += result.truth_rank == 1
            self.top5 += result.truth_rank <= 5

    def label_scores(self) -> metrics.LabelScores | None:
        """Several labels per image: precision, recall, F1 and AP per label over the images with truth."""
        if not self.label_rows:
            return None
        shown = np.stack([row for row, _ in self.label_rows])
        truth = np.zeros(shown.shape, bool)
        for i, (_, labels) in enumerate(self.label_rows):
            truth[i, sorted(labels)] = True
        return metrics.label_scores(shown, truth, self.threshold)

    def ious(self) -> np.ndarray:
        """A segmentation's IoU per class over the images with true masks (NaN for a class in none of either)."""
        return np.divide(self.both, self.either, out=np.full(len(self.both), np.nan), where=self.either > 0)

    def box_scores(self) -> dict | None:
        """A detector's precision, recall and mAP at IoU 0.5 over the images with true boxes (boxes.precision_recall)."""
        from explain_cli.tasks import boxes

        return boxes.precision_recall(self.detections, self.true_boxes) if self.true_boxes else None

    def details(self) -> list[str]:
        """Lines after the summary: several labels per image, each label summed up; a segmentation's IoU per class; a
        detector's AP per class."""
        found = self.box_scores()
        if found is not None:
            return [f"  {self.labels[c] if c < len(self.labels) else c}: AP@0.5 {ap:.3f}" for c, ap in found["ap50"].items()]
        if self.with_masks:
            names = self.labels or tuple(str(i) for i in range(len(self.both)))
            return [f"  {name}: IoU " + ("-" if np.isnan(iou) else f"{iou:.3f}")
                    for name, iou in zip(names, self.ious())]
        scores = self.label_scores()
        if scores is None:
            return []
        names = self.labels or tuple(str(i) for i in range(len(scores.f1)))
        width = max(len(name) for name in names)
        return [f"  {name:<{width}}  precision {p:.3f}, recall {r:.3f}, F1 {f:.3f}, AP " + (
            "-" if np.isnan(a) else f"{a:.3f}") for name, p, r, f, a in zip(
            names, scores.precision, scores.recall, scores.f1, scores.average_precision)]

    def summary(self, manifest: output.Manifest | None) -> str:
        parts = [f"{self.done} of {self.total} images done"]
        if manifest is not None:
            parts[0] += f", {self.explained} {self.records} written to {manifest.path.parent}"
        if self.with_truth:
            parts.append(f"accuracy top-1 {self.top1 / self.with_truth:.1%}, top-5 {self.top5 / self.with_truth:.1%} "
                         f"over {self.with_truth} images with truth")
        scores = self.label_scores()
        if scores is not None:
            parts.append(f"labels at {self.threshold:g}: macro F1 {scores.macro_f1:.3f}, mAP "
                         f"{scores.mean_average_precision:.3f} over {len(self.label_rows)} images with truth")
        found = self.box_scores()
        if found is not None:
            parts.append(f"detections at IoU 0.5: precision {found['precision']:.3f}, recall {found['recall']:.3f}, "
                         f"mAP@0.5 {found['map50']:.3f} over {len(self.true_boxes)} images with true boxes")
        if self.with_masks:
            parts.append(f"mean IoU {np.nanmean(self.ious()):.3f} over {self.with_masks} images with true masks")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already explained)")
        if self.failed:
            first = "; ".join(self.failed[:3]) + ("; ..." if len(self.failed) > 3 else "")
            parts.append(f"{len(self.failed)} failed: {first}")
        return "; ".join(parts)


def report(run: Run, tally: Tally, *, style: str, verbose: bool, batch_size: int,
           manifest: output.Manifest | None = None, side: output.Manifest | None = None) -> None:
    """Account and print each result of `run` as it comes, then the summary; exit 1 if any image failed.

    However the loop ends, the run is stopped (work not started cancelled, writes under way finished)
    and every finished image is accounted before the summary is printed.
    """
    settled: ImageResult | None = None
    stdout_open = True
    with Display(tally.total, batch_size) as display:
        try:
            for result in run:
                with interrupts.held():  # a signal waits until the image is wholly accounted
                    _record(result, tally, manifest, side, display)
                    settled = result
                _show(result, display, style, verbose, tally.truth_given)
        except BrokenPipeError:
            stdout_open = False
            raise
        finally:
            with interrupts.held(reraise=False):  # stopping already: a second Ctrl-C waits for the summary
                unsettled = [run.last] if run.last is not None and run.last is not settled else []
                for result in unsettled + run.stop():
                    try:
                        _record(result, tally, manifest, side, display)
                    except ExplainError:
                        continue  # the disk is full: its files are gone, and the first error is the one shown
                    if stdout_open:
                        try:
                            _show(result, display, style, verbose, tally.truth_given)
                        except BrokenPipeError:
                            stdout_open = False
                display.message(tally.summary(manifest))
                for line in tally.details():
                    display.message(line)
    if tally.failed:
        raise SystemExit(1)


def _record(result: ImageResult, tally: Tally, manifest: output.Manifest | None, side: output.Manifest | None,
            display: Display) -> None:
    """The image's manifest lines and its count, together; if the lines cannot be written, its files go.

    Side records (evaluate's sanity.jsonl) go first: the main manifest is what --skip-existing reads, so
    an image it lists is complete."""
    display.advance()
    if result.error:
        tally.failed.append(result.error)
        display.message(f"error: {result.error}")
        return
    for target, lines in ((side, result.side_records), (manifest, result.records)):
        if target is None or not lines:
            continue
        try:
            with output.writing_into(target.path.parent):
                target.append(lines)
        except BaseException:
            output.remove_files(target.path.parent, result.files())
            raise
    if manifest is not None:
        tally.explained += sum(1 for r in result.records if r.get("overlay", "") is not None)  # an image with
        # nothing explained (no detection, no class present) still has its line
    tally.count(result)


def _show(result: ImageResult, display: Display, style: str, verbose: bool, truth_given: bool) -> None:
    if result.error:
        return
    notes = [f"note: {result.source.shown}: {note}" for note in result.notes] if verbose else []
    for line in result.warnings + notes:
        display.message(line)
    if result.predictions:
        truth = {"truth": result.truth} if truth_given else None
        display.data(output.format_predictions(result.source.shown, result.predictions, style, truth))


class Display:
    """stdout for data, stderr for messages and, when stderr is a terminal, a progress bar below them.

    The bar's ETA comes from the rate measured over whole batches after the first one (which also
    pays for loading the model and tracing it), and is not shown before it can be right.
    """

    def __init__(self, total: int, batch_size: int) -> None:
        self.total, self.batch_size = total, batch_size
        self.count = 0
        self._eta = Eta(total, batch_size)
        self._progress: Any = None
        self._task: Any = None
        self._data_through_bar = False

    def __enter__(self) -> Display:
        if _is_terminal(sys.stderr):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(file=sys.stderr, highlight=False, emoji=False, markup=False)
            self._progress = Progress(
                TextColumn("explain"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console, transient=True,
                redirect_stdout=False, redirect_stderr=False,  # stdout is data: it never goes to the bar's stream
            )
            self._task = self._progress.add_task("explain", total=self.total, eta="")
            # stdout on the same terminal: its lines go through the bar's console, so they print above it.
            self._data_through_bar = _is_terminal(sys.stdout) and _same_file(sys.stdout, sys.stderr)
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def data(self, text: str) -> None:
        if self._data_through_bar:
            sys.stdout.flush()
            self._progress.console.out(text, end="")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def message(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.out(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.count += 1
        if self._progress is None:
            return
        eta = self._eta.update(self.count, time.monotonic())
        fields = {"eta": f"eta {_clock(eta)}"} if eta is not None else {}
        self._progress.update(self._task, completed=self.count, refresh=True, **fields)


class Eta:
    """Seconds left, from the rate over whole batches after the first: the first batch also pays for the
    model's load and trace, and images come out of a batch all at once, so shorter spans mislead."""

    def __init__(self, total: int, batch_size: int) -> None:
        self.total, self.batch_size = total, batch_size
        self._first: tuple[float, int] | None = None  # when the first batch was done, and its size

    def update(self, count: int, now: float) -> float | None:
        """The estimate after `count` images are done (None until it can be measured, and between batches)."""
        if count % self.batch_size and count != self.total:
            return None
        if self._first is None:
            self._first = (now, count)
            return None
        started, first = self._first
        rate = (count - first) / max(now - started, 1e-9)
        return (self.total - count) / rate


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _same_file(one: Any, other: Any) -> bool:
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))
    except (AttributeError, OSError, ValueError):
        return False
