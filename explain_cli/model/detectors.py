"""An object detector loaded as a LoadedModel: from a .keras file or a keras.Model, fed at its input's size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from explain_cli.errors import BadArgument, ExplainError
from explain_cli.model.loading import (LoadedModel, _image_converter, _load_file, identity, import_user_code,
                                       preprocessing)
from explain_cli.model.sizes import size_of


def load_detector(model: Any, labels: Any, preprocess: str | None, imports: Sequence[str], unsafe: bool, precision: str,
          input_size: tuple[int, int] | None) -> Any:
    """The detector as a LoadedModel, fed at its input's size (size_of)."""
    from explain_cli.inputs import labels as labels_module
    from explain_cli.model.backend import load_tensorflow

    _, keras = load_tensorflow()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise BadArgument("--model", f"{path}: no such file")
        keras_model = _load_file(path, import_user_code(imports), unsafe)
        name, live = path.name, False
    elif isinstance(model, keras.Model):
        keras_model, name, live = model, model.name, True
    else:
        raise ExplainError(f"not a Keras model: a {type(model).__name__} (give a keras.Model or a .keras file)")
    converter = _image_converter(keras_model)
    prep = converter if preprocess is None and converter is not None else preprocessing(preprocess or "none")
    height, width, channels = size_of(keras_model, name, input_size)
    return LoadedModel(name=name, keras_model=keras_model, height=height, width=width,
                              channels=channels, preprocess=prep, default_layer=None,
                              labels=labels_module.Labels(()), precision=precision, live=live,
                              identity=None if live else identity(str(model), "imagenet", imports))


def with_labels(model: Any, labels: Any) -> Any:
    import dataclasses

    return dataclasses.replace(model, labels=labels)
