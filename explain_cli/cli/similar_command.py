"""`explain similar`: why two images are alike to an embedding model, or why each image is like given vectors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from explain_cli.cli import common
from explain_cli.methods import METHODS, PERTURBATION_METHODS, PIXEL_METHODS


@click.command(cls=common.Command)
@common.display_option
@common.input_options
@click.option("--to", "vectors", type=click.Path(path_type=Path), metavar="FILE",
              help="Compare every input with these vectors instead of A with B: a .npy of (D,) or (k, D), or text, one "
              "vector a line (a class prototype, a text embedding made elsewhere).")
@click.option("--json", "as_json", is_flag=True, help="Print each likeness as a JSON line (default: a table on a "
              "terminal, TSV when piped: image, reference, cosine).")
@common.model_options
@click.option("--method", type=click.Choice([m for m in (*METHODS, *PIXEL_METHODS, *PERTURBATION_METHODS)
                                             if m != "attention-rollout"]), default="gradcam", show_default=True,
              help="Any class-activation method, pixel method, rise or occlusion: each explains the cosine.")
@click.option("--max-masks", type=click.IntRange(1), default=64, show_default=True, help="scorecam: masks.")
@common.perturbation_options
@click.option("--seed", type=int, default=0, show_default=True, help="rise: the masks' seed; smoothgrad: the noise's.")
@common.render_options
def similar(vectors: Path | None, method: str, max_masks: int, seed: int, **options: Any) -> None:
    """Embedding models: why A and B are alike (or each input and the vectors of --to).

    \b
      explain similar a.jpg b.jpg --model embedder.keras
      explain similar photos/ --to prototypes.npy --model embedder.keras --method rise

    The model's output is each image's embedding e. A's map explains cos(e(A), e(B)) with e(B) held fixed, and B's
    the other way round. Writes OUTPUT_DIR/<name>.<method>.<j>-<reference>.jpg per image and reference, a
    manifest line each, and prints image, reference, cosine.
    """
    from explain_cli.cli import similar_run

    if click.get_current_context().get_parameter_source("model_spec") is click.core.ParameterSource.DEFAULT:
        raise click.UsageError("explain similar needs an embedding model: --model FILE (its output is each image's "
                               "embedding)")
    settings = common.settings(options, method, max_masks=max_masks, seed=seed, **common.perturbation_settings(options))
    similar_run.run(settings, options["sources"], sys.stdin, vectors, common.output_options(options),
                    common.run_options(options))
