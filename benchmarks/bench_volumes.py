"""What Grad-CAM on volumes costs next to plain inference, end to end, side by side in one process.

The model is the Keras example's CT classifier ("3D image classification from CT scans": four Conv3D blocks on
128 × 128 × 64 volumes, global pooling, a sigmoid), random weights. The volumes are NIfTI files (.nii.gz) of
192 × 192 × 80 smooth values. Plain inference is what a user would write: each file read with nibabel, resampled to
the model's grid, batches through `model.predict`. `explain gradcam` is the command line's run once the model is
loaded: read, resample, the explain step, the montage (JPEG) and the NIfTI map of each volume written, a manifest
line each.

    python benchmarks/bench_volumes.py [--volumes 16] [--repeats 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import rounds_here  # noqa: E402


def ct_classifier(keras):
    """The Keras example's 3-D CNN (Zunair et al.'s), on (128, 128, 64, 1)."""
    inputs = keras.Input((128, 128, 64, 1))
    x = inputs
    for filters in (64, 64, 128, 256):
        x = keras.layers.Conv3D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPool3D(2)(x)
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def smooth_volumes(folder: Path, count: int) -> list[Path]:
    import nibabel

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.normal(size=(12, 12, 5, 1)).astype(np.float32) * 400
        from explain_cli.inputs.grids import resample

        voxels = resample(coarse, (192, 192, 80))[..., 0] + rng.normal(size=(192, 192, 80)).astype(np.float32) * 20
        path = folder / f"ct{i:02d}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(voxels, np.diag([0.8, 0.8, 2.5, 1.0])), path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import nibabel

    from explain_cli import Explainer
    from explain_cli.cli import runs
    from explain_cli.inputs import sources as inputs
    from explain_cli.inputs.grids import resample
    from explain_cli.running import pipeline

    keras.utils.set_random_seed(0)
    folder = Path(tempfile.mkdtemp())
    model = ct_classifier(keras)
    model.save(folder / "ct.keras")
    data = folder / "volumes"
    data.mkdir()
    paths = smooth_volumes(data, args.volumes)
    batch_size = 8

    def plain() -> None:
        for start in range(0, len(paths), batch_size):
            batch = np.stack([resample(np.asarray(nibabel.load(str(p)).dataobj, np.float32)[..., None], (128, 128, 64))
                              for p in paths[start:start + batch_size]])
            model.predict(batch, batch_size=batch_size, verbose=0)

    made = Explainer(str(folder / "ct.keras"), precision=args.precision, batch_size=batch_size)
    found = made.examples_of(inputs.discover([str(data)], None))
    out = runs.OutputOptions(out_dir=folder / "out")
    options = out.render(made.name, "gradcam", made.layer, listing=made.listing, canvas=made.canvas)
    chosen = made.choose()

    def explained() -> None:
        compute, finish = runs.steps_of(lambda worker: (worker.compute(chosen), pipeline.explanations(
            worker.labels, 1, options)), made)
        for result in pipeline.Run(found, compute, finish, size=made.input_shape, batch_size=batch_size):
            assert result.error is None, result.error

    runs_ = {"plain inference (nibabel, resample, model.predict)": plain, "explain gradcam, end to end": explained}
    times = rounds_here(runs_, args.repeats)  # interleaved: the machine is shared and noisy
    base = statistics.median(times["plain inference (nibabel, resample, model.predict)"])
    print(f"{args.volumes} volumes of 192 × 192 × 80 to 128 × 128 × 64, precision {made.precision}, "
          f"median of {args.repeats}:")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name}: {1000 * median / args.volumes:.0f} ms per volume, {median / base:.2f}× plain")


if __name__ == "__main__":
    main()
