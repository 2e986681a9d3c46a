"""`explain report`: the offline HTML page of a run (io/report.py builds it)."""

from __future__ import annotations

from pathlib import Path

import click

from explain_cli.cli import common


@click.command(cls=common.Command)
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sheet", type=click.IntRange(0), default=0, show_default=True,
              help="Also write sheet.png: N images in a grid for slides, the wrong ones first.")
def report(out_dir: Path, sheet: int) -> None:
    """Write OUT_DIR/report.html, a page to browse a run: a card per image with its predictions and
    explanations, filters, sorting, a confusion matrix when truth is known.

    Built from every manifest*.jsonl in OUT_DIR (and evaluation.jsonl); it opens from disk with no network.
    """
    from explain_cli.cli import runs

    runs.build_report(out_dir, sheet)
