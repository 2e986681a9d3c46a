"""`explain similar`'s run: the references (the other image's embedding, or vectors given), then each input's
likeness maps through the same engine, files, manifest and stdout rows as the other commands."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

from explain_cli.cli import console, runs
from explain_cli.errors import BadArgument
from explain_cli.explainer import Explainer
from explain_cli.io import files as output
from explain_cli.running import pipeline
from explain_cli.settings import Settings, check
from explain_cli.tasks import similar


def run(settings: Settings, arguments: Sequence[str], stdin: TextIO, vectors: Path | None,
        out: runs.OutputOptions, run_options: runs.RunOptions) -> None:
    """Without `vectors`: the two inputs, each explained by its likeness to the other; with: every input by its
    likeness to each vector."""
    check(settings)
    out.check()
    found = runs.sources(arguments, stdin, out.out_dir, run_options.shard)
    if vectors is None and len(found) != 2:
        raise BadArgument(None, f"explain similar compares two images, A and B ({len(found)} given): give two, or "
                          "--to VECTORS to compare any number with given embeddings")
    given = similar.read_vectors(vectors) if vectors is not None else None
    with runs.manifest_in(out.out_dir, output.MANIFEST, run_options.shard) as manifest:
        made = runs.explainer(settings, run_options)
        made.check_embedder()
        made.check_method(settings.method)
        if vectors is not None:
            refs = similar.references_in(vectors, made.embedding_size, given)
        else:
            embedded = made.embed([str(s.path) for s in found])
            refs = similar.pair([s.key for s in found], [s.shown for s in found], embedded)
        name = settings.method
        runs.say(f"{made.name}: {name} of the likeness " + (f"at layer {made.layer}" + (
            "" if settings.layer else " (default)") if made.layer_for(name) else "by forward passes alone"))
        options = out.render(made.name, name, made.layer_for(name), canvas=made.canvas)

        def make(worker: Explainer) -> tuple[pipeline.Compute, pipeline.Finish]:
            return worker.compute(None, references=refs), similar.written(refs, options)

        started = runs.start(found, make, made, run_options)
        with runs.report_after(out.report, out.out_dir):
            runs.report(started, console.Tally(len(found)), run_options, manifest)
