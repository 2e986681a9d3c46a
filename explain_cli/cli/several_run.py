"""explain gradcam / cam / saliency on a model of several inputs: the examples of a CSV (`--inputs`), and a run per
picture input, each explained at its own layer while the others are held as each example gives them. The files and
manifest lines name the input a map belongs to; the inputs of values get their gradient × input in the manifest."""

from __future__ import annotations

import dataclasses
from typing import Any

from explain_cli.cli import runs
from explain_cli.errors import BadArgument
from explain_cli.explainer import Explainer
from explain_cli.io import files as output
from explain_cli.running import pipeline
from explain_cli.settings import Settings


def layers_by_input(spec: str | None, pictures: list[str]) -> dict[str, str | None]:
    """--layer for a model of several inputs: one layer (for its one picture input), or input=layer pairs split by
    commas; an input not named takes its default."""
    if spec is None:
        return {name: None for name in pictures}
    if "=" not in spec:
        if len(pictures) > 1:
            raise BadArgument("--layer", f"the model has {len(pictures)} picture inputs ({', '.join(pictures)}): name "
                              "each one's layer, --layer INPUT=LAYER[,INPUT=LAYER]")
        return {pictures[0]: spec}
    chosen: dict[str, str | None] = {name: None for name in pictures}
    for pair in spec.split(","):
        name, _, layer = pair.partition("=")
        if name.strip() not in chosen or not layer.strip():
            raise BadArgument("--layer", f"{pair!r} is not INPUT=LAYER for a picture input ({', '.join(pictures)})")
        chosen[name.strip()] = layer.strip()
    return chosen


def explain(settings: Settings, request: runs.ClassRequest, top: int, out: runs.OutputOptions,
            run: runs.RunOptions, name: str, grey_map: bool) -> None:
    """Each picture input of the model explained over the examples of --inputs, one run after another; exit 1 if any
    example failed in any of them."""
    assert run.inputs is not None
    with runs.manifest_in(out.out_dir, output.MANIFEST, run.shard) as manifest:
        first = runs.explainer(dataclasses.replace(settings, layer=None), run)
        pictures = [settings.input_name] if settings.input_name else first.picture_inputs()
        layers = layers_by_input(settings.layer, pictures)
        failed = 0
        for input_name in pictures:
            made = runs.explainer(dataclasses.replace(settings, input_name=input_name, layer=layers[input_name]), run)
            found = made.examples_from(run.inputs)
            if run.shard is not None:
                found = [source for source in found if run.shard.takes(source)]
            chosen = runs.choice(request, found, made, None)
            made.check_method(name)
            layer = made.layer_for(name)
            merged = made.inputs_at(layer) if layer else []
            runs.say(f"{made.name}: {name} of input {input_name} " + (f"at layer {layer}" if layer else
                                                                        "by forward passes alone") + (
                f" (after the inputs merge: its maps are of {', '.join(merged)} at once, at its resolution)"
                if len(merged) > 1 else ""))
            options = out.render(made.name, name if len(pictures) == 1 else f"{name}.{input_name}", layer,
                                 grey_map=grey_map, listing=made.listing, floor=chosen.floor, canvas=made.canvas,
                                 input_name=input_name)

            def make(worker: Explainer, options: pipeline.RenderOptions = options,
                     chosen: Any = chosen) -> tuple[pipeline.Compute, pipeline.Finish]:
                return worker.compute(chosen), pipeline.explanations(worker.labels, top, options)

            try:
                runs.report(runs.start(found, make, made, run), runs.tally(found, None, 0, made), run, manifest)
            except SystemExit as ended:  # some examples failed: the other inputs are still explained
                failed = failed or int(ended.code or 1)
    if failed:
        raise SystemExit(failed)
