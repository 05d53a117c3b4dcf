"""shapes.infer against Keras: output shapes, parameter counts (trainable or not) and MACs."""

from __future__ import annotations

import math
import sys

import pytest
from conftest import CONFIGS, TUTORIALS, tiny_config

from cnnctl.errors import ShapeError
from cnnctl.schema import ModelConfig
from cnnctl.shapes import MAX_PARAMS, check_class_scores, infer, output_units

CIFAR10_PUBLISHED_SHAPES = [
    (32, 32, 32), (30, 30, 32), (15, 15, 32), (15, 15, 32),
    (15, 15, 64), (13, 13, 64), (6, 6, 64), (6, 6, 64),
    (6, 6, 64), (4, 4, 64), (2, 2, 64), (2, 2, 64),
    (256,), (512,), (512,), (10,),
]

# Stacks that exercise every rule of shapes.infer; each is built once with Keras and compared layer by layer.
STACKS = {
    "strides": ([17, 17, 3], [
        {"Conv2D": {"filters": 4, "kernel_size": 3, "strides": 2}},
        {"Conv2D": {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"}},
        {"Conv2D": {"filters": 5, "kernel_size": [1, 3], "strides": [1, 2], "use_bias": False}},
    ]),
    "dilation": ([20, 20, 2], [
        {"Conv2D": {"filters": 3, "kernel_size": 3, "dilation_rate": 2}},
        {"Conv2D": {"filters": 3, "kernel_size": 3, "dilation_rate": [3, 1], "padding": "same"}},
        {"Conv2D": {"filters": 3, "kernel_size": [2, 3], "dilation_rate": [1, 4]}},
    ]),
    "groups": ([9, 9, 4], [
        {"Conv2D": {"filters": 6, "kernel_size": 3, "groups": 2}},
        {"Conv2D": {"filters": 12, "kernel_size": 1, "groups": 6, "use_bias": False}},
    ]),
    "depthwise_and_separable": ([15, 15, 3], [
        {"DepthwiseConv2D": {"kernel_size": 3}},
        {"DepthwiseConv2D": {"kernel_size": 3, "depth_multiplier": 2, "strides": 2, "padding": "same",
                             "use_bias": False}},
        {"SeparableConv2D": {"filters": 8, "kernel_size": 3, "depth_multiplier": 2, "dilation_rate": 2,
                             "padding": "same"}},
        {"SeparableConv2D": {"filters": 5, "kernel_size": [3, 1], "strides": 2, "use_bias": False}},
        {"DepthwiseConv2D": {"kernel_size": 2, "dilation_rate": 2}},
    ]),
    "batch_norm": ([6, 6, 3], [
        {"Conv2D": {"filters": 8, "kernel_size": 3, "use_bias": False}},
        {"BatchNormalization": {}},
        {"ReLU": {"max_value": 6.0}},
        {"BatchNormalization": {"center": False}},
        {"BatchNormalization": {"axis": 1, "scale": False}},
        {"Flatten": {}},
        {"BatchNormalization": {"momentum": 0.9}},
        {"Dense": {"units": 2}},
    ]),
    "global_pooling": ([7, 5, 6], [
        {"GlobalAveragePooling2D": {"keepdims": True}},
        {"Conv2D": {"filters": 4, "kernel_size": 1}},
        {"GlobalMaxPooling2D": {}},
        {"Dense": {"units": 3}},
    ]),
    "global_pooling_aliases": ([7, 5, 6], [{"GlobalMaxPool2D": {"keepdims": True}}, {"GlobalAvgPool2D": {}}]),
    "zero_padding": ([5, 6, 2], [
        {"ZeroPadding2D": {}},
        {"ZeroPadding2D": {"padding": 2}},
        {"ZeroPadding2D": {"padding": [1, 3]}},
        {"Conv2D": {"filters": 2, "kernel_size": 5}},
    ]),
    "pooling": ([13, 11, 3], [
        {"MaxPooling2D": {}},
        {"MaxPool2D": {"pool_size": 3, "strides": 1, "padding": "same"}},
        {"AveragePooling2D": {"pool_size": [3, 2], "strides": [2, 1]}},
        {"AvgPool2D": {"pool_size": 2, "padding": "same"}},
    ]),
    "layer_norm_and_dense_on_3d": ([6, 4, 3], [
        {"Dense": {"units": 5}},
        {"LayerNormalization": {}},
        {"LayerNormalization": {"axis": 1, "center": False}},
        {"Dense": {"units": 7, "use_bias": False}},
        {"Flatten": {}},
        {"LayerNormalization": {"scale": False}},
        {"Dense": {"units": 4}},
    ]),
    "trainable_false": ([8, 8, 2], [
        {"Conv2D": {"filters": 4, "kernel_size": 3, "trainable": False}},
        {"BatchNormalization": {"trainable": False}},
        {"SeparableConv2D": {"filters": 4, "kernel_size": 3, "trainable": False}},
        {"BatchNormalization": {}},
        {"LayerNormalization": {"trainable": False}},
        {"Flatten": {}},
        {"Dense": {"units": 6, "trainable": False}},
        {"Dense": {"units": 3}},
    ]),
    "shape_keeping": ([6, 6, 3], [
        {"Dropout": {"rate": 0.2}},
        {"SpatialDropout2D": {"rate": 0.2}},
        {"Activation": {"activation": "gelu"}},
        {"LeakyReLU": {}},
        {"ReLU": {}},
        {"Softmax": {"axis": 1}},
        {"Flatten": {}},
    ]),
    "vector_input": ([20], [
        {"Dense": {"units": 16, "activation": "relu"}},
        {"Dropout": {"rate": 0.5}},
        {"BatchNormalization": {}},
        {"Dense": {"units": 4, "activation": "softmax"}},
    ]),
    "matrix_input": ([5, 7], [{"Dense": {"units": 3}}, {"Flatten": {}}, {"Dense": {"units": 2}}]),
}


def keras_layers(model):
    """(output shape, params, trainable params) per layer of a built Keras model."""
    return [(tuple(layer.output.shape[1:]), layer.count_params(),
             sum(math.prod(weight.shape) for weight in layer.trainable_weights)) for layer in model.layers]


def inferred_layers(model_config):
    return [(info.output_shape, info.params, info.trainable_params) for info in infer(model_config)]


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorials_match_keras_and_the_published_counts(tutorial_models, name):
    config, model = tutorial_models[name]
    assert inferred_layers(config.model) == keras_layers(model)
    assert sum(info.params for info in infer(config.model)) == model.count_params() == TUTORIALS[name]


def test_cifar10_shapes_are_the_published_table(tutorial_models):
    config, model = tutorial_models["cifar10"]
    assert [info.output_shape for info in infer(config.model)] == CIFAR10_PUBLISHED_SHAPES
    assert [tuple(layer.output.shape[1:]) for layer in model.layers] == CIFAR10_PUBLISHED_SHAPES


@pytest.mark.parametrize("stack", STACKS)
def test_stack_matches_keras(keras_module, stack):
    from cnnctl.model import build_model

    input_shape, layers = STACKS[stack]
    model_config = ModelConfig(input_shape=input_shape, layers=layers)
    model = build_model(model_config)
    assert inferred_layers(model_config) == keras_layers(model)
    assert sum(info.params for info in infer(model_config)) == model.count_params()
    trainable = sum(info.trainable_params for info in infer(model_config))
    assert trainable == sum(math.prod(weight.shape) for weight in model.trainable_weights)


def test_batch_norm_moving_statistics_are_not_trainable():
    model_config = ModelConfig(input_shape=[4, 4, 8], layers=[{"BatchNormalization": {}}])
    (info,) = infer(model_config)
    assert (info.params, info.trainable_params) == (4 * 8, 2 * 8)  # gamma, beta | moving mean, variance


def test_macs_by_hand(tutorial_models):
    config, _ = tutorial_models["mnist"]
    infos = infer(config.model)
    # conv2d: 24x24 outputs, each a 5x5x1 window for each of 32 filters.
    assert infos[0].macs == 24 * 24 * (5 * 5 * 1) * 32 == 460_800
    # conv2d_1 on the 12x12x32 pooled map: 8x8 outputs x (5x5x32) x 64 filters.
    assert infos[2].macs == 8 * 8 * (5 * 5 * 32) * 64 == 3_276_800
    # dense: 1024 inputs x 10 units (the bias is an addition, not a MAC).
    assert infos[5].macs == 1024 * 10 == 10_240
    assert [infos[i].macs for i in (1, 3, 4)] == [0, 0, 0]  # pooling and flatten multiply nothing
    assert sum(info.macs for info in infos) == 460_800 + 3_276_800 + 10_240


def test_macs_by_hand_for_other_layers():
    model_config = ModelConfig(input_shape=[10, 10, 4], layers=[
        {"Conv2D": {"filters": 6, "kernel_size": 3, "groups": 2}},
        {"DepthwiseConv2D": {"kernel_size": 3, "depth_multiplier": 2}},
        {"SeparableConv2D": {"filters": 5, "kernel_size": 1}},
        {"Dense": {"units": 3}},
    ])
    conv, depthwise, separable, dense = (info.macs for info in infer(model_config))
    assert conv == 8 * 8 * (3 * 3 * (4 // 2)) * 6  # each filter sees the 2 channels of its group
    assert depthwise == 6 * 6 * (3 * 3) * 6 * 2  # one 3x3 window per input channel and multiplier
    assert separable == 6 * 6 * (1 * 1 * 12 + 12 * 5)  # depthwise 1x1, then pointwise 12 -> 5
    assert dense == 6 * 6 * 5 * 3  # Dense on a (6, 6, 5) tensor: every position


def test_a_billion_filters_is_refused_without_building_anything(monkeypatch):
    model_config = ModelConfig(input_shape=[32, 32, 3], layers=[{"Conv2D": {"filters": 10**9, "kernel_size": 3}}])
    for module in ("keras", "tensorflow"):  # any attempt to import them (and so to build) would fail
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ShapeError) as info:
        infer(model_config)
    assert info.value.index == 0
    assert info.value.message.startswith("model.layers[0] (Conv2D): the model would have 28,000,000,000 parameters")
    assert f"the limit is {MAX_PARAMS:,}" in info.value.message


def test_the_parameter_limit_counts_the_whole_model():
    # 8192 -> 200,000 -> 8192: 1.64e9 and 1.64e9 weights; each layer alone would be allowed.
    layers = [{"Dense": {"units": 200_000}}, {"Dense": {"units": 8192}}]
    with pytest.raises(ShapeError) as info:
        infer(ModelConfig(input_shape=[8192], layers=layers))
    assert info.value.index == 1


@pytest.mark.parametrize(("input_shape", "layers", "index", "message"), [
    ([3, 3, 1], [{"Conv2D": {"filters": 2, "kernel_size": 5}}], 0,
     "model.layers[0] (Conv2D): a 5x5 kernel (dilation (1, 1)) does not fit its 3x3 input (3, 3, 1) "
     "with padding 'valid'"),
    ([7, 7, 1], [{"Conv2D": {"filters": 2, "kernel_size": 3, "dilation_rate": 4}}], 0,
     "model.layers[0] (Conv2D): a 3x3 kernel (dilation (4, 4)) does not fit its 7x7 input (7, 7, 1)"),
    ([8, 8, 1], [{"MaxPooling2D": {}}, {"MaxPooling2D": {}}, {"MaxPooling2D": {}}, {"MaxPooling2D": {}}], 3,
     "model.layers[3] (MaxPooling2D): a 2x2 pooling window leaves nothing of its 1x1 input (1, 1, 1)"),
    ([8, 8, 1], [{"Flatten": {}}, {"Conv2D": {"filters": 2, "kernel_size": 1}}], 1,
     "model.layers[1] (Conv2D): needs an image input (height, width, channels), got (64)"),
    ([16], [{"MaxPool2D": {}}], 0, "model.layers[0] (MaxPool2D): needs an image input"),
    ([8, 8, 3], [{"BatchNormalization": {"axis": 4}}], 0,
     "model.layers[0] (BatchNormalization): axis 4 is outside its input (8, 8, 3)"),
    ([8, 8, 3], [{"LayerNormalization": {"axis": -4}}], 0, "axis -4 is outside its input (8, 8, 3)"),
    ([8, 8, 3], [{"Conv2D": {"filters": 4, "kernel_size": 1, "groups": 2}}], 0,
     "groups=2 must divide both the 3 input channels and the 4 filters"),
    ([8, 8, 3], [{"Conv2D": {"filters": 4, "kernel_size": 3, "strides": [1, 2], "dilation_rate": [2, 1]}}], 0,
     "model.layers[0] (Conv2D): Keras' Conv2D cannot combine strides (1, 2) with dilation_rate (2, 1)"),
])
def test_impossible_stacks_name_the_layer_and_the_shapes(input_shape, layers, index, message):
    with pytest.raises(ShapeError) as info:
        infer(ModelConfig(input_shape=input_shape, layers=layers))
    assert info.value.index == index
    assert message in info.value.message


def test_keras_refuses_what_infer_refuses(keras_module):
    # The strides-with-dilation rule mirrors Keras; if Keras ever allows it, infer can too.
    with pytest.raises(ValueError, match="dilation_rate"):
        keras_module.layers.Conv2D(4, 3, strides=2, dilation_rate=2)


def test_same_padding_never_runs_out():
    model_config = ModelConfig(input_shape=[3, 3, 1], layers=[
        {"Conv2D": {"filters": 2, "kernel_size": 7, "padding": "same", "strides": 4}},
        {"MaxPooling2D": {"pool_size": 5, "padding": "same"}},
    ])
    assert [info.output_shape for info in infer(model_config)] == [(1, 1, 2), (1, 1, 2)]


def test_output_units(tutorial_models):
    for config, _ in tutorial_models.values():
        assert output_units(config.model) == 10


# ---------------------------------------------------------------- the output: one vector of class scores


@pytest.mark.parametrize(("input_shape", "layers", "message"), [
    ([8, 8, 1], [{"Conv2D": {"filters": 4, "kernel_size": 3}}, {"Dense": {"units": 10, "activation": "softmax"}}],
     "model.layers[1] (Dense): the model's output is (6, 6, 10) per image, but it must be one vector of class "
     "scores (classes,): add Flatten or GlobalAveragePooling2D before model.layers[1] (Dense)"),
    ([8, 8, 1], [{"Dense": {"units": 10}}, {"Softmax": {}}],
     "model.layers[1] (Softmax): the model's output is (8, 8, 10) per image, but it must be one vector of class "
     "scores (classes,): add Flatten or GlobalAveragePooling2D before model.layers[0] (Dense)"),
    ([8, 8, 3], [{"Conv2D": {"filters": 10, "kernel_size": 1}}, {"GlobalAveragePooling2D": {"keepdims": True}}],
     "model.layers[1] (GlobalAveragePooling2D): the model's output is (1, 1, 10) per image, but it must be one "
     "vector of class scores (classes,): end the stack with Flatten or GlobalAveragePooling2D and a Dense layer "
     "of one unit per class"),
    ([5, 7], [{"Dense": {"units": 3}}], "model.layers[0] (Dense): the model's output is (5, 3) per image"),
])
def test_an_output_that_is_not_class_scores_is_refused_at_the_last_layer(input_shape, layers, message):
    model = ModelConfig(input_shape=input_shape, layers=layers)
    with pytest.raises(ShapeError) as info:
        check_class_scores(model, infer(model))
    assert info.value.index == len(layers) - 1
    assert info.value.message.startswith(message), info.value.message


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_config_outputs_class_scores(path):
    from cnnctl.config import load_config

    model = load_config(path).model
    check_class_scores(model, infer(model))  # load_config checks it too; this says which rule a failure broke


@pytest.mark.parametrize("command", ["config", "summary"])
def test_a_model_without_flatten_is_refused_at_config_time_with_its_location(cli, write_yaml, command):
    layers = [{"Conv2D": {"filters": 4, "kernel_size": 3}}, {"Dense": {"units": 3, "activation": "softmax"}}]
    path = write_yaml(tiny_config(layers=layers))
    line = path.read_text().splitlines().index("  - Dense:") + 1
    result = cli(command, path)
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr == (f"error: {path}:{line}:5: model.layers[1] (Dense): the model's output is (10, 10, 3) "
                             "per image, but it must be one vector of class scores (classes,): add Flatten or "
                             "GlobalAveragePooling2D before model.layers[1] (Dense)\n")
