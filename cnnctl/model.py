"""Build the Keras model a `ModelConfig` describes.

The stack is checked by shapes.infer first, so an impossible shape or an absurd size is reported
(with the layer's index and the shapes) before TensorFlow allocates anything.
"""

from __future__ import annotations

from pathlib import Path

from cnnctl.errors import ConfigError, RunError
from cnnctl.layers import layer_names, name_problems
from cnnctl.schema import ModelConfig
from cnnctl.shapes import infer


def build_model(model_config: ModelConfig, *, name: str = "cnnctl", float32_output: bool = False,
                training_images=None, seed: int = 0):
    """A `keras.Sequential` built on `model_config.input_shape`.

    `float32_output` runs the last layer (the softmax) in float32, as mixed precision needs for a
    numerically stable loss; it changes no weights, shapes or parameter counts. `training_images` (uint8
    or float, as stored) is a model about to be trained: its `whitening` kernels are set from a sample of
    them (drawn with `seed`) and the fast training ops of cnnctl.fastops are swapped in.
    """
    import keras

    from cnnctl import initializers

    infer(model_config)
    names = layer_names(model_config.layers)
    problems = name_problems(names)
    if problems:  # load_config reports these with their file:line; this is for configs built in code
        raise ConfigError([f"model.layers[{index}]: {message}" for index, message in problems])
    layers = [keras.Input(shape=tuple(model_config.input_shape), name="input")]
    last = len(model_config.layers) - 1
    for index, (entry, layer_name) in enumerate(zip(model_config.layers, names, strict=True)):
        kwargs = entry.args.kwargs()
        kwargs["name"] = layer_name
        if "kernel_initializer" in kwargs:
            kwargs["kernel_initializer"] = initializers.keras_initializer(kwargs["kernel_initializer"])
        # Set as an attribute: not every constructor takes `trainable` (SpatialDropout2D does not).
        trainable = kwargs.pop("trainable", True)
        if float32_output and index == last:
            kwargs["dtype"] = "float32"
        layer = getattr(keras.layers, entry.keras_class)(**kwargs)
        layer.trainable = trainable
        layers.append(layer)
    model = keras.Sequential(layers, name=name)
    if training_images is not None:
        from cnnctl import fastops

        initializers.whiten_from(model, model_config, training_images, seed)
        fastops.speed_up(model)
    return model


def load_model(path: str | Path):
    """Load a `.keras` file with safe_mode (no code from the file runs); errors name the file."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such model file")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise RunError(f"{path}: not a Keras model file (.keras zip archive)")
    import keras

    from cnnctl import initializers  # noqa: F401  (registers Dirac, which a saved model may name)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise RunError(f"{path}: refused: the model contains code that would run when loaded "
                           "(safe_mode); cnnctl does not load such files") from None
        raise RunError(f"{path}: cannot load the model: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # corrupt archives raise a zoo of types: say which file, never a traceback
        raise RunError(f"{path}: cannot load the model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def probability_model(model, from_logits: bool):
    """A model whose outputs are class probabilities: `model` itself, or for one trained on logits
    (`train.loss.from_logits`) `model` followed by a softmax in float32 (same weights, shared).

    Evaluation, predict and export all see outputs through this. A model that already ends in a Softmax
    layer (an export of a logits model is one) is returned as it is.
    """
    import keras

    if not from_logits or isinstance(model.layers[-1], keras.layers.Softmax):
        return model
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="images")
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(model(inputs))
    return keras.Model(inputs, outputs, name=model.name)
