"""Output shapes, parameter counts and MACs of a layer stack, worked out without TensorFlow.

This is what lets a config with an impossible shape (a 5x5 kernel on a 3x3 map) or an absurd size
(10^9 filters) be refused before anything is built, and what gives `cnnctl summary` its MAC column.
tests/test_shapes.py checks shapes and parameter counts against Keras for many stacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnctl.errors import ShapeError
from cnnctl.layers import LayerEntry
from cnnctl.schema import ModelConfig

# Refuse a model whose parameters alone would not fit comfortably in memory (float32 + Adam state),
# or one layer's output for a single image that TensorFlow could not even index (2**31 elements).
MAX_PARAMS = 2_000_000_000
MAX_ACTIVATION = 2**31 - 1


@dataclass(frozen=True)
class LayerInfo:
    index: int
    type: str  # Keras class name
    output_shape: tuple[int, ...]  # without the batch axis
    params: int
    trainable_params: int
    macs: int  # multiply-accumulates for one image


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _conv_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    effective = (kernel - 1) * dilation + 1
    return (size - effective) // stride + 1 if size >= effective else 0


def _spatial(shape, kernel, strides, dilation, padding) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(strides), _pair(dilation)
    return _conv_out(shape[0], kh, sh, dh, padding), _conv_out(shape[1], kw, sw, dw, padding)


def _describe(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _layer(entry: LayerEntry, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int, int]:
    """(output shape, params, non-trainable params, MACs) of one layer on an input of `shape`."""
    # long: one short branch per layer type, read as a table; split up, the table would be scattered
    kind, a = entry.keras_class, entry.args
    needs_image = kind not in {"Dense", "Dropout", "Flatten", "Activation", "ReLU", "LeakyReLU", "Softmax",
                               "BatchNormalization", "LayerNormalization", "Rescaling"}  # fmt: skip
    if needs_image and len(shape) != 3:
        raise ValueError(f"needs an image input (height, width, channels), got {_describe(shape)}")
    if kind in {"Conv2D", "DepthwiseConv2D", "SeparableConv2D"}:
        channels = shape[2]
        kh, kw = _pair(a.kernel_size)
        if kind == "Conv2D" and max(_pair(a.strides)) > 1 and max(_pair(a.dilation_rate)) > 1:
            raise ValueError(f"Keras' Conv2D cannot combine strides {_pair(a.strides)} with "
                             f"dilation_rate {_pair(a.dilation_rate)}: one of them must be 1")
        h, w = _spatial(shape, a.kernel_size, a.strides, a.dilation_rate, a.padding)
        if h <= 0 or w <= 0:
            raise ValueError(f"a {kh}x{kw} kernel (dilation {_pair(a.dilation_rate)}) does not fit "
                             f"its {shape[0]}x{shape[1]} input {_describe(shape)} with padding 'valid'")
        if kind == "Conv2D":
            if channels % a.groups or a.filters % a.groups:
                raise ValueError(f"groups={a.groups} must divide both the {channels} input channels "
                                 f"and the {a.filters} filters")
            weights = kh * kw * (channels // a.groups) * a.filters
            out_c, bias = a.filters, a.filters
            macs = h * w * weights
        else:
            depth = kh * kw * channels * a.depth_multiplier
            mid = channels * a.depth_multiplier
            if kind == "DepthwiseConv2D":
                weights, out_c, macs = depth, mid, h * w * depth
            else:
                weights, out_c = depth + mid * a.filters, a.filters
                macs = h * w * (depth + mid * a.filters)
            bias = out_c
        params = weights + (bias if a.use_bias else 0)
        return (h, w, out_c), params, 0, macs
    if kind in {"MaxPooling2D", "AveragePooling2D"}:
        pool = _pair(a.pool_size)
        strides = a.strides if a.strides is not None else pool
        h, w = _spatial(shape, pool, strides, 1, a.padding)
        if h <= 0 or w <= 0:
            raise ValueError(f"a {pool[0]}x{pool[1]} pooling window leaves nothing of its "
                             f"{shape[0]}x{shape[1]} input {_describe(shape)}")
        return (h, w, shape[2]), 0, 0, 0
    if kind in {"GlobalAveragePooling2D", "GlobalMaxPooling2D"}:
        return ((1, 1, shape[2]) if a.keepdims else (shape[2],)), 0, 0, 0
    if kind == "ZeroPadding2D":
        ph, pw = _pair(a.padding)
        return (shape[0] + 2 * ph, shape[1] + 2 * pw, shape[2]), 0, 0, 0
    if kind == "Dense":
        fan_in = shape[-1]
        params = fan_in * a.units + (a.units if a.use_bias else 0)
        return shape[:-1] + (a.units,), params, 0, math.prod(shape[:-1]) * fan_in * a.units
    if kind == "Flatten":
        return (math.prod(shape),), 0, 0, 0
    if kind in {"BatchNormalization", "LayerNormalization"}:
        axis = a.axis if a.axis >= 0 else len(shape) + 1 + a.axis
        if not 1 <= axis <= len(shape):
            raise ValueError(f"axis {a.axis} is outside its input {_describe(shape)}")
        channels = shape[axis - 1]
        learned = channels * (int(a.center) + int(a.scale))
        moving = 2 * channels if kind == "BatchNormalization" else 0
        return shape, learned + moving, moving, 0
    # Dropout, SpatialDropout2D, Activation, ReLU, LeakyReLU, Softmax, Rescaling keep the shape.
    return shape, 0, 0, 0


def infer(model: ModelConfig) -> list[LayerInfo]:
    """Walk the stack; raise ShapeError naming the layer and the shapes when it cannot be built."""
    shape = tuple(model.input_shape)
    infos: list[LayerInfo] = []
    total = 0
    for index, entry in enumerate(model.layers):
        where = f"model.layers[{index}] ({entry.type})"
        try:
            shape_out, params, frozen, macs = _layer(entry, shape)
        except ValueError as exc:
            raise ShapeError(f"{where}: {exc}", index=index) from None
        if math.prod(shape_out) == 0:
            raise ShapeError(f"{where}: output {_describe(shape_out)} from input {_describe(shape)} is empty",
                             index=index)
        trainable = params - frozen if entry.args.trainable else 0
        total += params
        if total > MAX_PARAMS:
            gib = total * 4 / 2**30
            raise ShapeError(f"{where}: the model would have {total:,} parameters ({gib:,.1f} GiB in float32 "
                             f"before optimizer state); the limit is {MAX_PARAMS:,}", index=index)
        if math.prod(shape_out) > MAX_ACTIVATION:
            gib = math.prod(shape_out) * 4 / 2**30
            raise ShapeError(f"{where}: output {_describe(shape_out)} is {math.prod(shape_out):,} values per image "
                             f"({gib:,.1f} GiB in float32); the limit is {MAX_ACTIVATION:,}", index=index)
        infos.append(LayerInfo(index, entry.keras_class, shape_out, params, trainable, macs))
        shape = shape_out
    return infos


def check_class_scores(model: ModelConfig, infos: list[LayerInfo]) -> None:
    """ShapeError, at the last layer, unless the model's output is one vector of class scores per image.

    Training compares that output with one label per image: an output of (H, W, classes), a Dense
    layer applied at every position of a feature map, would fail there, far from its cause.
    """
    last = infos[-1]
    if len(last.output_shape) == 1:
        return
    dense = [info.index for info in infos if info.type == "Dense"]
    fix = (f"add Flatten or GlobalAveragePooling2D before model.layers[{dense[-1]}] (Dense)" if dense else
           "end the stack with Flatten or GlobalAveragePooling2D and a Dense layer of one unit per class")
    raise ShapeError(f"model.layers[{last.index}] ({model.layers[-1].type}): the model's output is "
                     f"{_describe(last.output_shape)} per image, but it must be one vector of class scores "
                     f"(classes,): {fix}", index=last.index)


def output_units(model: ModelConfig) -> int:
    """Size of the last axis of the model's output (the number of classes it predicts)."""
    return infer(model)[-1].output_shape[-1]
