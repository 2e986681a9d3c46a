"""`explain detect`: an object detector's boxes, each explained."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from explain_cli.cli import common
from explain_cli.methods import DETECTION_METHODS


@click.command(cls=common.Command)
@common.input_options
@click.option("--json", "as_json", is_flag=True, help="Print each image's detections as JSON lines (default: a table "
              "on a terminal, TSV when piped: image, k, class, label, score, x0, y0, x1, y1).")
@click.option("--model", "model_spec", required=True, metavar="PATH",
              help="An object detector: a .keras file (keras-hub's RetinaNet or D-FINE, or a model whose outputs are "
              "boxes (batch, A, 4) and class scores (batch, A, classes) before non-maximum suppression), or an .onnx, "
              ".tflite or SavedModel export (YOLO, DETR: explained by drise).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Class names, one a line (default: numbers).")
@click.option("--preprocess", type=click.Choice(["caffe", "tf", "torch", "none"]),
              help="Input scaling (default: the image converter of a keras-hub model saved with its preprocessor, "
              "else none).")
@click.option("--import", "imports", multiple=True, metavar="MODULE|FILE.py",
              help="Import your code before the model loads (its custom layers).")
@click.option("--unsafe-deserialization", "unsafe", is_flag=True,
              help="Let the model file run the Python code it stores (Lambda layers); only for files you trust.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Compute the model in bfloat16 or float32 (auto: bf16 where the CPU has it natively).")
@common.runtime_option
@click.option("--input-size", callback=lambda ctx, param, value: common._input_size(value), metavar="HEIGHTxWIDTH",
              help="A detector whose input size is free (and that has no image converter saying it): the size to "
              "feed it.")
@common.detector_format_options
@common.detection_options
@click.option("--layer", help="Where the gradient methods take their maps (default: the last feature map every "
              "class score depends on: a feature pyramid's backbone's last stage).")
@click.option("--method", type=click.Choice(DETECTION_METHODS),
              help="A gradient method of the Grad-CAM family, eigencam (class-agnostic), drise (masks and forward "
              "passes only) or random (the control). Default: gradcam; drise for a model file, which has no layers.")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]),
              help="A model file: its input's layout, where its shape does not say.")
@click.option("--resize", type=click.Choice(["stretch", "letterbox"]),
              help="How a picture is fitted to the model's input: stretched, or letterboxed (scaled whole, centred on "
              "grey 114, as YOLO trains); boxes and maps come back in the picture's own pixels. Default: stretch, or "
              "letterbox for an Ultralytics export.")
@click.option("--masks", "rise_masks", type=click.IntRange(1), default=1000, show_default=True,
              help="drise: random masks (one forward pass each).")
@click.option("--cells", type=click.IntRange(1), default=16, show_default=True,
              help="drise: each mask is a grid of N × N cells, upsampled.")
@click.option("--keep", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5, show_default=True,
              help="drise: the probability a cell is kept.")
@click.option("--seed", type=int, default=0, show_default=True, help="drise: the masks' seed.")
@click.option("--truth", "truth_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE.csv", help="True boxes, image,x0,y0,x1,y1,class (the images' pixels; as evaluate --boxes "
              "reads): adds precision, recall and mAP at IoU 0.5 to the summary.")
@common.render_options
def detect(**options: Any) -> None:
    """Object detectors: why each box was found (a map per detection).

    \b
    For each image, writes OUTPUT_DIR/<name>.detections.jpg (every box with its label and score) and
    OUTPUT_DIR/<name>.det<k>.<method>.<class>-<label>.jpg per detection (its map, its box drawn), a manifest line
    each, and prints each detection: image, k, class, label, score, x0, y0, x1, y1 (the image's pixels).
    """
    from explain_cli.cli import detect_run

    run = common.run_options(options)
    settings = common.detector_settings(options, options.pop("method"), masks=options.pop("rise_masks"),
                                        cells=options.pop("cells"), keep=options.pop("keep"), seed=options.pop("seed"),
                                        batch_size=run.batch_size, max_pixels=run.max_pixels)
    detect_run.run(settings, options["sources"], sys.stdin, options["truth_file"], common.output_options(options), run)
