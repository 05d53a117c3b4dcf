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
Regularizer = Literal["l1", "l2", "l1l2", "orthogonal_regularizer"]  # Keras 3 names (L1L2 is "l1l2")
Constraint = Literal["max_norm", "min_max_norm", "non_neg", "unit_norm"]
Padding = Literal["valid", "same"]

PosInt = Annotated[int, Field(gt=0, le=2**31 - 1)]
Size2 = Union[PosInt, Annotated[list[PosInt], Field(min_length=2, max_length=2)]]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


class LayerArgs(BaseModel):
    """Keyword arguments of one layer. Only what the config set is written back out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")] | None = None
    trainable: bool = True

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
    kernel_initializer: Initializer = "glorot_uniform"
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
}

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
        return LAYER_TYPES[self.type][1]


def _entry_model(layer_type: str, args_model: type[LayerArgs]) -> type[LayerEntry]:
    return create_model(
        f"{layer_type}Layer",
        __base__=LayerEntry,
        **{layer_type: (args_model, Field(default_factory=args_model))},
    )


_ENTRY_MODELS = {name: _entry_model(name, args) for name, (args, _) in LAYER_TYPES.items()}


def _layer_tag(value: Any) -> str | None:
    if isinstance(value, LayerEntry):
        return value.type
    if isinstance(value, str) and value in LAYER_TYPES:
        return value  # a bare `- Flatten` is accepted as `- Flatten: {}`
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in LAYER_TYPES else None
    return None


def _bare_name_to_mapping(value: Any) -> Any:
    if isinstance(value, str) and value in LAYER_TYPES:
        return {value: {}}
    if isinstance(value, dict) and len(value) == 1:
        key, args = next(iter(value.items()))
        if args is None:  # `- Flatten:` with nothing after the colon
            return {key: {}}
    return value


_LayerUnion = Annotated[
    Union[tuple(Annotated[model, Tag(name)] for name, model in _ENTRY_MODELS.items())],  # noqa: UP007
    Discriminator(
        _layer_tag,
        custom_error_type="layer_type",
        custom_error_message="a layer is a one-key mapping from an allowed layer type to its arguments",
    ),
]
Layer = Annotated[_LayerUnion, BeforeValidator(_bare_name_to_mapping)]


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
