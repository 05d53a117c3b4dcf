"""The allow-list of layer types a config may use, and the keyword arguments each one takes.

Every model here mirrors the constructor of the Keras layer of the same name (tests/test_layers.py
checks each field against `inspect.signature` of the installed Keras). Nothing that runs code from
a config is listed: no Lambda, no custom objects, initialisers and regularisers by name only.
This module does not import TensorFlow, so a config is validated without paying for it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    create_model,
    model_serializer,
)

# Names of keras.activations that need no arguments; `get()` resolves each of them.
Activation = Literal[
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
    "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "softmax", "log_softmax",
    "softplus", "softsign", "exponential", "linear",
]  # fmt: skip
Initializer = Literal[
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
    "zeros", "ones", "random_uniform", "random_normal", "truncated_normal", "orthogonal",
]  # fmt: skip
# cnnctl's own, for Conv2D kernels (cnnctl/initializers.py): dirac keeps a channel's input at the kernel's
# centre (an identity convolution, airbench's init); whitening is set from the training images' patches.
ConvInitializer = Union[Initializer, Literal["dirac", "whitening"]]  # noqa: UP007
Regularizer = Literal["l1", "l2", "l1l2", "orthogonal_regularizer"]  # Keras 3 names (L1L2 is "l1l2")
Constraint = Literal["max_norm", "min_max_norm", "non_neg", "unit_norm"]
Padding = Literal["valid", "same"]

PosInt = Annotated[int, Field(gt=0, le=2**31 - 1)]
Size2 = Union[PosInt, Annotated[list[PosInt], Field(min_length=2, max_length=2)]]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


class Args(BaseModel):
    """Keyword arguments of a Keras layer's constructor. Only what the config set is written back out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict:
        data = handler(self)
        order = [k for cls in type(self).__mro__ for k in getattr(cls, "__annotations__", {})]
        # `key in data`: an explicit `activation: null` is set, but exclude_none has dropped it.
        return {key: data[key] for key in dict.fromkeys(order) if key in self.model_fields_set and key in data}

    def kwargs(self) -> dict[str, Any]:
        """The arguments for the Keras constructor: what was set, lists as tuples."""
        out = {}
        for key in self.model_fields_set:
            value = getattr(self, key)
            out[key] = tuple(value) if isinstance(value, list) else value
        return out


class LayerArgs(Args):
    """Keyword arguments of one layer of the model."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")] | None = None
    trainable: bool = True


class _BiasArgs(LayerArgs):
    activation: Activation | None = None
    use_bias: bool = True
    bias_initializer: Initializer = "zeros"
    bias_regularizer: Regularizer | None = None
    activity_regularizer: Regularizer | None = None
    bias_constraint: Constraint | None = None


class Conv2D(_BiasArgs):
    filters: PosInt
    kernel_size: Size2
    strides: Size2 = 1
    padding: Padding = "valid"
    dilation_rate: Size2 = 1
    groups: PosInt = 1
    kernel_initializer: ConvInitializer = "glorot_uniform"
    kernel_regularizer: Regularizer | None = None
    kernel_constraint: Constraint | None = None


class DepthwiseConv2D(_BiasArgs):
    kernel_size: Size2
    strides: Size2 = 1
    padding: Padding = "valid"
    depth_multiplier: PosInt = 1
    dilation_rate: Size2 = 1
    depthwise_initializer: Initializer = "glorot_uniform"
    depthwise_regularizer: Regularizer | None = None
    depthwise_constraint: Constraint | None = None


class SeparableConv2D(DepthwiseConv2D):
    filters: PosInt
    pointwise_initializer: Initializer = "glorot_uniform"
    pointwise_regularizer: Regularizer | None = None
    pointwise_constraint: Constraint | None = None


class Pooling2D(LayerArgs):
    pool_size: Size2 = 2
    strides: Size2 | None = None
    padding: Padding = "valid"


class AveragePooling2D(Pooling2D):
    pool_size: Size2  # required in Keras' signature, unlike MaxPooling2D


class GlobalPooling2D(LayerArgs):
    keepdims: bool = False


class ZeroPadding2D(LayerArgs):
    padding: Size2 = 1


class Dense(_BiasArgs):
    units: PosInt
    kernel_initializer: Initializer = "glorot_uniform"
    kernel_regularizer: Regularizer | None = None
    kernel_constraint: Constraint | None = None


class Dropout(LayerArgs):
    rate: Rate
    seed: Annotated[int, Field(ge=0)] | None = None


class SpatialDropout2D(Dropout):
    pass


class Flatten(LayerArgs):
    pass


class ActivationLayer(LayerArgs):
    activation: Activation


class ReLU(LayerArgs):
    max_value: Annotated[float, Field(gt=0)] | None = None
    negative_slope: Annotated[float, Field(ge=0)] = 0.0
    threshold: float = 0.0


class LeakyReLU(LayerArgs):
    negative_slope: Annotated[float, Field(ge=0)] = 0.3


class Softmax(LayerArgs):
    axis: int = -1


class BatchNormalization(LayerArgs):
    axis: int = -1
    momentum: Annotated[float, Field(ge=0, le=1)] = 0.99
    epsilon: Annotated[float, Field(gt=0)] = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    moving_mean_initializer: Initializer = "zeros"
    moving_variance_initializer: Initializer = "ones"
    beta_regularizer: Regularizer | None = None
    gamma_regularizer: Regularizer | None = None
    beta_constraint: Constraint | None = None
    gamma_constraint: Constraint | None = None


class Rescaling(LayerArgs):
    scale: Annotated[float, Field(allow_inf_nan=False)]
    offset: Annotated[float, Field(allow_inf_nan=False)] = 0.0


class LayerNormalization(LayerArgs):
    axis: int = -1
    epsilon: Annotated[float, Field(gt=0)] = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    beta_regularizer: Regularizer | None = None
    gamma_regularizer: Regularizer | None = None
    beta_constraint: Constraint | None = None
    gamma_constraint: Constraint | None = None


# Config name -> (argument model, Keras class name). Aliases point at the same Keras class.
LAYER_TYPES: dict[str, tuple[type[LayerArgs], str]] = {
    "Conv2D": (Conv2D, "Conv2D"),
    "DepthwiseConv2D": (DepthwiseConv2D, "DepthwiseConv2D"),
    "SeparableConv2D": (SeparableConv2D, "SeparableConv2D"),
    "MaxPooling2D": (Pooling2D, "MaxPooling2D"),
    "MaxPool2D": (Pooling2D, "MaxPooling2D"),
    "AveragePooling2D": (AveragePooling2D, "AveragePooling2D"),
    "AvgPool2D": (AveragePooling2D, "AveragePooling2D"),
    "GlobalAveragePooling2D": (GlobalPooling2D, "GlobalAveragePooling2D"),
    "GlobalAvgPool2D": (GlobalPooling2D, "GlobalAveragePooling2D"),
    "GlobalMaxPooling2D": (GlobalPooling2D, "GlobalMaxPooling2D"),
    "GlobalMaxPool2D": (GlobalPooling2D, "GlobalMaxPooling2D"),
    "ZeroPadding2D": (ZeroPadding2D, "ZeroPadding2D"),
    "Dense": (Dense, "Dense"),
    "Dropout": (Dropout, "Dropout"),
    "SpatialDropout2D": (SpatialDropout2D, "SpatialDropout2D"),
    "Flatten": (Flatten, "Flatten"),
    "Activation": (ActivationLayer, "Activation"),
    "ReLU": (ReLU, "ReLU"),
    "LeakyReLU": (LeakyReLU, "LeakyReLU"),
    "Softmax": (Softmax, "Softmax"),
    "BatchNormalization": (BatchNormalization, "BatchNormalization"),
    "LayerNormalization": (LayerNormalization, "LayerNormalization"),
    "Rescaling": (Rescaling, "Rescaling"),
}

# ---------------------------------------------------------------- augmentation (data.augment)


def _factor(low: float, high: float, *, above_low: bool = False):
    """A number or a [lower, upper] pair within the range the Keras layer takes (its constructor refuses
    anything outside, which would otherwise surface only when training starts)."""
    bounds = {"gt" if above_low else "ge": low, "le": high}
    number = Annotated[float, Field(allow_inf_nan=False, **bounds)]
    return Union[number, Annotated[list[number], Field(min_length=2, max_length=2)]]  # noqa: UP007


Signed = _factor(-1, 1)  # RandomTranslation, RandomRotation, RandomBrightness
Unsigned = _factor(0, 1)  # RandomContrast, RandomErasing
Zoom = _factor(-1, 1, above_low=True)  # RandomZoom: -1 would zoom into a point
FillMode = Literal["reflect", "wrap", "constant", "nearest"]
Interpolation = Literal["nearest", "bilinear"]


class AugmentArgs(Args):
    """Arguments of one augmentation layer; cnnctl sets seed, value_range, data_format and dtype itself."""


class RandomFlip(AugmentArgs):
    mode: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal_and_vertical"


class AlternatingFlip(AugmentArgs):
    """airbench's flip: each image is flipped at random (seeded) in the first epoch, then the other way in every
    next epoch, so consecutive epochs see both sides of every image. Keras' RandomFlip, with that draw."""

    mode: Literal["horizontal", "vertical"] = "horizontal"


class _Geometric(AugmentArgs):
    fill_mode: FillMode = "reflect"
    interpolation: Interpolation = "bilinear"
    fill_value: Annotated[float, Field(allow_inf_nan=False)] = 0.0


class RandomTranslation(_Geometric):
    height_factor: Signed
    width_factor: Signed


class RandomRotation(_Geometric):
    factor: Signed


class RandomZoom(_Geometric):
    height_factor: Zoom
    width_factor: Zoom | None = None


class RandomContrast(AugmentArgs):
    factor: Unsigned


class RandomBrightness(AugmentArgs):
    factor: Signed


class RandomErasing(AugmentArgs):
    factor: Unsigned = 1.0
    scale: Unsigned = [0.02, 0.33]
    fill_value: Annotated[float, Field(allow_inf_nan=False)] | None = None


class MixUp(AugmentArgs):
    alpha: Annotated[float, Field(gt=0, le=100)] = 0.2


class CutMix(AugmentArgs):
    factor: Annotated[float, Field(gt=0, le=1)] = 1.0


# Config name -> (argument model, Keras class name): Keras' own preprocessing layers, run in the tf.data
# pipeline on training batches only. MixUp and CutMix also mix the labels (which become one-hot).
AUGMENT_TYPES: dict[str, tuple[type[AugmentArgs], str]] = {
    name: (args, name) for name, args in (
        ("RandomFlip", RandomFlip), ("RandomTranslation", RandomTranslation), ("RandomRotation", RandomRotation),
        ("RandomZoom", RandomZoom), ("RandomContrast", RandomContrast), ("RandomBrightness", RandomBrightness),
        ("RandomErasing", RandomErasing), ("MixUp", MixUp), ("CutMix", CutMix))
} | {"AlternatingFlip": (AlternatingFlip, "RandomFlip")}
MIXING = ("MixUp", "CutMix")
ALL_TYPES = {**LAYER_TYPES, **AUGMENT_TYPES}

# Layers that are refused with a reason rather than "unknown".
FORBIDDEN_LAYERS = {
    "Lambda": "it runs Python code from the config",
    "TFSMLayer": "it loads and runs an external SavedModel",
    "InputLayer": "the input is given by model.input_shape",
    "Input": "the input is given by model.input_shape",
}


class LayerEntry(BaseModel):
    """Common base of the one-key mappings `{Conv2D: {...}}` that make up `model.layers`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def type(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def args(self) -> LayerArgs:
        return getattr(self, self.type)

    @property
    def keras_class(self) -> str:
        return ALL_TYPES[self.type][1]


def _entry_model(layer_type: str, args_model: type[BaseModel]) -> type[LayerEntry]:
    return create_model(
        f"{layer_type}Layer",
        __base__=LayerEntry,
        **{layer_type: (args_model, Field(default_factory=args_model))},
    )


def _one_key_union(types: dict[str, tuple], error_type: str, what: str):
    """The pydantic type of a `- Type: {args}` list item, for the layer types in `types`."""
    models = {name: _entry_model(name, args) for name, (args, _) in types.items()}

    def tag(value: Any) -> str | None:
        if isinstance(value, LayerEntry):
            return value.type
        if isinstance(value, str) and value in types:
            return value  # a bare `- Flatten` is accepted as `- Flatten: {}`
        if isinstance(value, dict) and len(value) == 1:
            key = next(iter(value))
            return key if key in types else None
        return None

    def bare_name_to_mapping(value: Any) -> Any:
        if isinstance(value, str) and value in types:
            return {value: {}}
        if isinstance(value, dict) and len(value) == 1:
            key, args = next(iter(value.items()))
            if args is None:  # `- Flatten:` with nothing after the colon
                return {key: {}}
        return value

    union = Annotated[
        Union[tuple(Annotated[model, Tag(name)] for name, model in models.items())],  # noqa: UP007
        Discriminator(tag, custom_error_type=error_type,
                      custom_error_message=f"{what} is a one-key mapping from an allowed type to its arguments"),
    ]
    return Annotated[union, BeforeValidator(bare_name_to_mapping)]


Layer = _one_key_union(LAYER_TYPES, "layer_type", "a layer")
Augmentation = _one_key_union(AUGMENT_TYPES, "augment_type", "an augmentation")


def _snake(name: str) -> str:
    """Keras' to_snake_case: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d, ReLU -> re_lu."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_names(entries: list) -> list[str]:
    """Keras' own naming (conv2d, conv2d_1, ...) but per model, so summaries are stable."""
    counts: dict[str, int] = {}
    names = []
    for entry in entries:
        if entry.args.name:
            names.append(entry.args.name)
            continue
        base = _snake(entry.keras_class)
        n = counts.get(base, 0)
        counts[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n}")
    return names


def name_problems(names: list[str]) -> list[tuple[int, str]]:
    """(index, message) for each layer whose name Keras would refuse: a repeat, or the input's "input"."""
    problems, seen = [], {}
    for index, name in enumerate(names):
        if name == "input":  # the model's keras.Input is named "input"; Sequential refuses a second one
            problems.append((index, "the layer name 'input' is taken by the model's input"))
        elif name in seen:
            problems.append((index, f"layer name {name!r} is already used by model.layers[{seen[name]}]"))
        else:
            seen[name] = index
    return problems
