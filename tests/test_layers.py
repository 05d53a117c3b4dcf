"""The layer allow-list and the optimizer arguments, checked against the installed Keras."""

from __future__ import annotations

import inspect
import math
import re
import typing

import pytest
from pydantic import ValidationError

from cnnctl.layers import (
    ALL_TYPES,
    AUGMENT_TYPES,
    FORBIDDEN_LAYERS,
    LAYER_TYPES,
    Activation,
    Constraint,
    Conv2D,
    Initializer,
    Regularizer,
)
from cnnctl.schema import (
    CNNCTL_OPTIMIZER_ARGS,
    COMMON_OPTIMIZER_ARGS,
    OPTIMIZER_ARGS,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
)
from cnnctl.shapes import infer

# The arguments each layer type cannot do without (and nothing else): enough to build it.
REQUIRED = {
    "Conv2D": {"filters": 4, "kernel_size": 3},
    "DepthwiseConv2D": {"kernel_size": 3},
    "SeparableConv2D": {"filters": 4, "kernel_size": 3},
    "AveragePooling2D": {"pool_size": 2},
    "AvgPool2D": {"pool_size": 2},
    "Dense": {"units": 4},
    "Dropout": {"rate": 0.5},
    "SpatialDropout2D": {"rate": 0.5},
    "Activation": {"activation": "relu"},
    "Rescaling": {"scale": 0.5},
}
BASE_LAYER_KWARGS = {"name", "trainable"}
KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                    "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "Nadam", "muon": "Muon"}


def literal_values(annotation) -> list:
    """Every Literal value inside an annotation (through Optional, Union, Annotated)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in literal_values(arg)]


def keras_params(keras_class: type) -> set[str]:
    """The constructor's keyword arguments, through the classes whose __init__ passes **kwargs on."""
    params: set[str] = set()
    for cls in keras_class.__mro__:
        if "__init__" in vars(cls):
            found = inspect.signature(cls.__init__).parameters
            params |= set(found) - {"self", "args", "kwargs"}
            if "kwargs" not in found:
                break
    return params


def test_required_table_matches_the_argument_models():
    for name, (args_model, _) in LAYER_TYPES.items():
        required = {key for key, field in args_model.model_fields.items() if field.is_required()}
        assert required == set(REQUIRED.get(name, {})), name


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_every_field_is_a_keras_constructor_argument(keras_module, layer_type):
    args_model, keras_name = LAYER_TYPES[layer_type]
    keras_class = getattr(keras_module.layers, keras_name)
    unknown = set(args_model.model_fields) - keras_params(keras_class) - BASE_LAYER_KWARGS
    assert not unknown, f"{layer_type}: not arguments of keras.layers.{keras_name}: {sorted(unknown)}"
    # name goes to the constructor (directly or through **kwargs); build_model sets trainable afterwards.
    parameters = inspect.signature(keras_class.__init__).parameters
    assert "name" in parameters or "kwargs" in parameters


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_every_layer_type_builds_and_matches_shapes_infer(keras_module, layer_type):
    from cnnctl.model import build_model

    model_config = ModelConfig(input_shape=[8, 8, 4], layers=[{layer_type: REQUIRED.get(layer_type, {})}])
    model = build_model(model_config)
    (layer,) = model.layers
    assert type(layer).__name__ == LAYER_TYPES[layer_type][1]
    (info,) = infer(model_config)
    assert info.output_shape == tuple(layer.output.shape[1:])
    assert info.params == layer.count_params()
    assert info.trainable_params == sum(math.prod(w.shape) for w in layer.trainable_weights)


def sample_value(args_model, key: str, base: dict):
    """A valid value of `key` other than its default (a Literal option, a flipped bool, a number, a pair)."""
    field = args_model.model_fields[key]
    candidates = [*literal_values(field.annotation)]
    if isinstance(field.default, bool):
        candidates.append(not field.default)
    candidates += [2, [2, 3], 0.5, "layer_x"]
    for candidate in candidates:
        if candidate == field.default:
            continue
        try:
            args_model.model_validate({**base, key: candidate})
        except ValidationError:
            continue
        return candidate
    raise AssertionError(f"no sample value for {args_model.__name__}.{key}")


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_keras_accepts_every_field_with_a_non_default_value(keras_module, layer_type):
    # One field at a time, so combinations Keras refuses (strides and dilation) do not arise.
    args_model, keras_name = LAYER_TYPES[layer_type]
    base = REQUIRED.get(layer_type, {})
    for key in args_model.model_fields:
        value = sample_value(args_model, key, base)
        kwargs = args_model.model_validate({**base, key: value}).kwargs()
        trainable = kwargs.pop("trainable", True)  # as build_model does: an attribute, not an argument
        layer = getattr(keras_module.layers, keras_name)(**kwargs)
        layer.trainable = trainable
        if key in {"name", "trainable"}:
            assert getattr(layer, key) == value
        elif key in {"units", "filters", "rate", "activation"} or key.endswith(("_initializer", "_regularizer")):
            assert getattr(layer, key) is not None


def test_frozen_layers_build_even_without_a_trainable_argument(keras_module):
    from cnnctl.model import build_model

    assert "trainable" not in inspect.signature(keras_module.layers.SpatialDropout2D.__init__).parameters
    model = build_model(ModelConfig(input_shape=[4, 4, 2], layers=[
        {"SpatialDropout2D": {"rate": 0.1, "trainable": False}}, {"Conv2D": {"filters": 2, "kernel_size": 1}}]))
    assert [layer.trainable for layer in model.layers] == [False, True]


@pytest.mark.parametrize("name", typing.get_args(Activation))
def test_activation_names_resolve(keras_module, name):
    assert callable(keras_module.activations.get(name))


@pytest.mark.parametrize("name", typing.get_args(Initializer))
def test_initializer_names_resolve(keras_module, name):
    assert isinstance(keras_module.initializers.get(name), keras_module.initializers.Initializer)


@pytest.mark.parametrize("name", typing.get_args(Regularizer))
def test_regularizer_names_resolve(keras_module, name):
    assert isinstance(keras_module.regularizers.get(name), keras_module.regularizers.Regularizer)


@pytest.mark.parametrize("name", typing.get_args(Constraint))
def test_constraint_names_resolve(keras_module, name):
    assert isinstance(keras_module.constraints.get(name), keras_module.constraints.Constraint)


def test_optimizer_names_are_the_allowed_ones():
    assert set(literal_values(OptimizerConfig.model_fields["name"].annotation)) == set(OPTIMIZER_ARGS)
    assert set(OPTIMIZER_ARGS) == set(KERAS_OPTIMIZERS)
    every_arg = set().union(*OPTIMIZER_ARGS.values()) | COMMON_OPTIMIZER_ARGS | CNNCTL_OPTIMIZER_ARGS
    assert every_arg == set(OptimizerConfig.model_fields)


OPTIMIZER_SAMPLES = {"momentum": 0.5, "nesterov": True, "rho": 0.8, "epsilon": 1e-6, "centered": True,
                     "beta_1": 0.8, "beta_2": 0.99, "amsgrad": True, "initial_accumulator_value": 0.2,
                     "ns_steps": 3, "rms_rate": 0.2, "normalize_weights": True,
                     "weight_decay": 0.01, "clipnorm": 1.0}


@pytest.mark.parametrize("name", OPTIMIZER_ARGS)
def test_every_optimizer_accepts_its_listed_arguments(keras_module, name):
    from cnnctl.compile import optimizer_class

    keras_class = optimizer_class(name)  # Keras' own, or (muon) cnnctl's subclass of it
    keras_own = getattr(keras_module.optimizers, KERAS_OPTIMIZERS[name])
    assert type(keras_module.optimizers.get(name)) is keras_own and issubclass(keras_class, keras_own)
    # `schedule` becomes the learning_rate argument; the rest are constructor arguments.
    missing = (OPTIMIZER_ARGS[name] | COMMON_OPTIMIZER_ARGS) - {"schedule"} - keras_params(keras_class)
    assert not missing, f"keras.optimizers.{keras_class.__name__} does not take {sorted(missing)}"
    config = OptimizerConfig(name=name, learning_rate=0.01,
                             **{key: OPTIMIZER_SAMPLES[key] for key in OPTIMIZER_ARGS[name]},
                             weight_decay=0.01, clipnorm=1.0)
    optimizer = keras_class(learning_rate=config.learning_rate, **config.keras_kwargs())
    assert optimizer.clipnorm == 1.0


@pytest.mark.parametrize("name", OPTIMIZER_ARGS)
def test_optimizers_refuse_arguments_of_other_optimizers(name):
    foreign = sorted(set().union(*OPTIMIZER_ARGS.values()) - OPTIMIZER_ARGS[name])
    for key in foreign:
        with pytest.raises(ValidationError, match=f"{name} does not take {key}"):
            OptimizerConfig(name=name, **{key: OPTIMIZER_SAMPLES[key]})


def test_only_one_gradient_clipping_argument(keras_module):
    with pytest.raises(ValidationError, match="set only one of clipnorm, clipvalue and global_clipnorm"):
        OptimizerConfig(name="adam", clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(ValueError, match="Only one of"):  # what Keras would have said at training time
        keras_module.optimizers.Adam(clipnorm=1.0, clipvalue=0.5)


def test_forbidden_layers_are_not_allowed():
    assert not set(FORBIDDEN_LAYERS) & set(LAYER_TYPES)
    assert "Lambda" in FORBIDDEN_LAYERS


def test_every_keras_class_exists(keras_module):
    for _, keras_name in LAYER_TYPES.values():
        assert isinstance(getattr(keras_module.layers, keras_name), type)


def test_kwargs_hold_only_what_was_set_with_lists_as_tuples():
    args = Conv2D(filters=8, kernel_size=[3, 5], strides=2)
    assert args.kwargs() == {"filters": 8, "kernel_size": (3, 5), "strides": 2}
    assert args.model_dump() == {"filters": 8, "kernel_size": [3, 5], "strides": 2}
    assert Conv2D(filters=8, kernel_size=3, padding="valid").model_dump() == {
        "filters": 8, "kernel_size": 3, "padding": "valid"}  # set to the default: still kept as written


@pytest.mark.parametrize(("args", "message"), [
    ({"filters": 0, "kernel_size": 3}, "greater than 0"),
    ({"filters": 8, "kernel_size": [3]}, "at least 2 items"),
    ({"filters": 8, "kernel_size": [3, 3, 3]}, "at most 2 items"),
    ({"filters": 8, "kernel_size": 3, "padding": "causal"}, "'valid' or 'same'"),
    ({"filters": 8, "kernel_size": 3, "kernel_regularizer": "l1_l2"}, "'l1', 'l2', 'l1l2'"),
    ({"filters": 8, "kernel_size": 3, "data_format": "channels_first"}, "Extra inputs are not permitted"),
    ({"filters": 8, "kernel_size": 3, "name": "9lives"}, "should match pattern"),
])
def test_layer_arguments_are_validated(args, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Conv2D(**args)



# ---------------------------------------------------------------- augmentation layers (data.augment)

AUGMENT_REQUIRED = {
    "RandomTranslation": {"height_factor": 0.1, "width_factor": 0.1},
    "RandomRotation": {"factor": 0.1},
    "RandomZoom": {"height_factor": 0.1},
    "RandomContrast": {"factor": 0.1},
    "RandomBrightness": {"factor": 0.1},
}
SET_BY_CNNCTL = {"seed", "value_range", "data_format", "dtype", "name"}  # augment.build's, never the config's
# Numbers at and just past the edges of every range Keras' augmentation layers take, single and paired.
EDGE_VALUES = [-100.0, -1.001, -1.0, -0.999, -0.5, 0.0, 0.001, 0.5, 0.999, 1.0, 1.001, 2.0, 100.0, 101.0,
               [-1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [0.0, 0.0], [-0.5, 0.5], [0.5, 1.5], [-1.5, 0.5], [-2.0, 3.0]]


def test_augment_required_table_matches_the_argument_models():
    for name, (args_model, _) in AUGMENT_TYPES.items():
        required = {key for key, field in args_model.model_fields.items() if field.is_required()}
        assert required == set(AUGMENT_REQUIRED.get(name, {})), name


@pytest.mark.parametrize("augment_type", AUGMENT_TYPES)
def test_every_augmentation_mirrors_its_keras_constructor(keras_module, augment_type):
    args_model, keras_name = AUGMENT_TYPES[augment_type]
    keras_class = getattr(keras_module.layers, keras_name)
    parameters = inspect.signature(keras_class.__init__).parameters
    fields = set(args_model.model_fields)
    unknown = fields - keras_params(keras_class)
    assert not unknown, f"{augment_type}: not arguments of keras.layers.{keras_name}: {sorted(unknown)}"
    required = {key for key, p in parameters.items() if key != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert required <= fields, f"{augment_type}: Keras requires {sorted(required - fields)}"
    assert not fields & SET_BY_CNNCTL
    for key, field in args_model.model_fields.items():  # unset means Keras' default: the documented one is it
        if (augment_type, key) == ("AlternatingFlip", "mode"):  # cnnctl's own: horizontal, as airbench flips
            continue
        if not field.is_required():
            default = parameters[key].default
            assert field.default == (list(default) if isinstance(default, tuple) else default), (augment_type, key)


@pytest.mark.parametrize("augment_type", AUGMENT_TYPES)
def test_keras_builds_every_augmentation_value_the_schema_accepts(keras_module, augment_type):
    from cnnctl.augment import build

    args_model, _ = AUGMENT_TYPES[augment_type]
    base = AUGMENT_REQUIRED.get(augment_type, {})
    for key, field in args_model.model_fields.items():
        values = EDGE_VALUES if takes_numbers(field.annotation) else [sample_value(args_model, key, base)]
        accepted = 0
        for value in values:
            try:
                entry = DataConfig(dataset="synthetic", augment=[{augment_type: {**base, key: value}}]).augment
            except ValidationError:
                continue
            accepted += 1
            (layer,) = build(entry)  # Keras' constructor checks the ranges; nothing it refuses gets this far
            assert type(layer).__name__ == AUGMENT_TYPES[augment_type][1]
        assert accepted, (augment_type, key)


def takes_numbers(annotation) -> bool:
    """Whether a float is among an annotation's types (through Optional, Union, Annotated, list)."""
    return annotation is float or any(takes_numbers(arg) for arg in typing.get_args(annotation))


def test_augmentations_and_model_layers_are_apart():
    assert not set(AUGMENT_TYPES) & set(LAYER_TYPES)
    assert set(ALL_TYPES) == set(LAYER_TYPES) | set(AUGMENT_TYPES)
    with pytest.raises(ValidationError, match="an augmentation is a one-key mapping"):
        DataConfig(dataset="synthetic", augment=[{"Conv2D": {"filters": 1, "kernel_size": 1}}])
    with pytest.raises(ValidationError, match="a layer is a one-key mapping"):
        ModelConfig(input_shape=[4, 4, 1], layers=["RandomFlip"])
    assert DataConfig(dataset="synthetic", augment=["RandomFlip", {"MixUp": None}]).augment[1].type == "MixUp"
