"""A Keras callback that explains a few images as the model trains: TensorBoard image summaries, and files.

    model.fit(x, y, epochs=20, callbacks=[ExplainCallback(val_images[:4], "logs/explain", every=5)])

Each N epochs the entry made once on the model being trained (explain_cli.load: an Explainer, or a Detector for an
object detector; its compiled step is traced once, and follows the weights as they change) explains the images and writes each overlay as an image summary
(`explain/<image>/<rank>`, at the epoch's step) and, with `out_dir`, as a PNG file. It only runs the model forward
and backward in inference mode: the training's weights, optimizer and metrics are not touched.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from explain_cli.model.backend import load_tensorflow

_, _keras = load_tensorflow()


class ExplainCallback(_keras.callbacks.Callback):  # type: ignore[misc, name-defined]
    """Explain `images` every `every` epochs (and after the last one) with `method` at `layer` (default: as for any
    model), for `classes` (default: each image's top class, a segmentation's classes, a detector's boxes; or a class,
    a list, or for a classifier a mapping from the image's index to its class, its truth say). `task`: "auto" (read
    from the model: explain_cli.load), "classify", "segment" or "detect". Overlays go to TensorBoard under `log_dir`,
    and with `out_dir` to files <out_dir>/epoch<NNN>/<index>[.det<k>].<method>.<class>-<label>.png. Extra keyword
    arguments go to the Explainer or the Detector (labels, preprocess, precision, min_score, ...)."""

    def __init__(self, images: Any, log_dir: str | Path | None = None, *, every: int = 1, method: str = "gradcam",
                 layer: str | None = None, classes: Any = None, top_k: int | None = None, out_dir: str | Path | None = None,
                 colormap: str = "jet", alpha: float = 0.4, task: str = "auto", **explainer: Any) -> None:
        super().__init__()
        if log_dir is None and out_dir is None:
            raise ValueError("ExplainCallback writes to log_dir (TensorBoard) or out_dir (files): give one")
        if every < 1:
            raise ValueError(f"every is a number of epochs, at least 1, not {every}")
        self.images = _as_list(images)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every, self.classes, self.top_k = every, classes, top_k
        self.colormap, self.alpha = colormap, alpha
        self._options = {"method": method, "layer": layer, **explainer}
        self.task = task
        self._explainer: Any = None
        self._writer: Any = None
        self._last = -1

    @property
    def explainer(self) -> Any:
        """The Explainer (or Detector) on the model being trained, made the first time it is needed."""
        if self._explainer is None:
            from explain_cli.entry import load

            self._explainer = load(self.model, self.task, **self._options)
        return self._explainer

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every == 0:
            self.write(epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        epochs = self.params.get("epochs") if self.params else None
        if epochs and self._last != epochs - 1:  # the last epoch, when `every` did not land on it
            self.write(epochs - 1)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, epoch: int) -> list[Any]:
        """Explain the images now, as at the end of `epoch` (counted from 0), and write what was asked for."""
        import tensorflow as tf

        self._last = epoch
        explanations: list[Any] = self.explainer.explain(self.images, self.classes, self.top_k)
        overlays = [(e, np.asarray(e.overlay(self.colormap, self.alpha))) for e in explanations]
        if self.log_dir is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(self.log_dir))
            with self._writer.as_default():
                for e, picture in overlays:
                    _image_summary(f"explain/{e.source}/{e.rank}", picture, epoch + 1,
                                   f"{e.method} at {e.layer}: {e.label} ({e.class_index}), p = {e.probability:.3f}")
            self._writer.flush()
        if self.out_dir is not None:
            from explain_cli.io import files as output
            from explain_cli.render import heatmaps as render

            folder = self.out_dir / f"epoch{epoch + 1:03d}"
            for e, picture in overlays:
                stem = f"{e.source}.det{e.rank}" if e.target.kind == "box" else str(e.source)
                name = output.explanation_name(PurePosixPath(stem), e.method, e.class_index, e.label, "png")
                output.write_atomic(folder / name.as_posix(), render.encode(picture, "png"))
        return explanations


def _image_summary(tag: str, picture: np.ndarray, step: int, description: str) -> None:
    """An image summary as TensorBoard's image plugin reads it: a string tensor [width, height, PNG], tagged with the
    plugin's name. Written with TensorFlow's own summary writer, so TensorBoard need not be installed to write it."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    from explain_cli.render import heatmaps as render

    height, width = picture.shape[:2]
    tensor = tf.constant([str(width).encode(), str(height).encode(), render.encode(picture, "png")])
    metadata = summary_pb2.SummaryMetadata(summary_description=description,
                                           plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images"))
    tf.summary.write(tag, tensor, step=step, metadata=metadata)


def _as_list(images: Any) -> Sequence[Any]:
    """The images as a list: a numpy batch's rows, or the items given."""
    if hasattr(images, "shape") and len(images.shape) == 4:
        return list(images)
    return list(images) if isinstance(images, (list, tuple)) else [images]
