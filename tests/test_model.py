"""model.build_model: the Keras model a ModelConfig describes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TUTORIALS

from cnnctl.errors import ConfigError, ShapeError
from cnnctl.layers import layer_names
from cnnctl.model import build_model, probability_model
from cnnctl.schema import ModelConfig

SMALL = ModelConfig(input_shape=[6, 6, 2], layers=[
    {"Conv2D": {"filters": 3, "kernel_size": 3, "activation": "relu"}},
    {"Flatten": {}},
    {"Dense": {"units": 4, "activation": "softmax"}},
])


@pytest.fixture
def mixed_bfloat16(keras_module):
    keras_module.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras_module.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_models(tutorial_models, name):
    config, model = tutorial_models[name]
    assert model.name == name
    assert model.count_params() == TUTORIALS[name]
    assert tuple(model.input_shape) == (None, *config.model.input_shape)
    assert tuple(model.output_shape) == (None, 10)
    assert [type(layer).__name__ for layer in model.layers] == [e.keras_class for e in config.model.layers]


def test_layer_names_follow_keras_but_per_model(tutorial_models):
    _, model = tutorial_models["mnist"]
    expected = ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dense"]
    assert [layer.name for layer in model.layers] == expected
    assert [layer.name for layer in build_model(tutorial_models["mnist"][0].model).layers] == expected


def test_layer_names_of_other_classes_and_given_names():
    model_config = ModelConfig(input_shape=[4, 4, 2], layers=[
        {"ReLU": {}}, {"LeakyReLU": {}}, {"MaxPool2D": {}}, {"GlobalAvgPool2D": {}},
        {"Dense": {"units": 2, "name": "logits"}}, {"Softmax": {}}, {"ReLU": {}},
    ])
    assert layer_names(model_config.layers) == ["re_lu", "leaky_re_lu", "max_pooling2d", "global_average_pooling2d",
                                         "logits", "softmax", "re_lu_1"]


def test_duplicate_layer_names_are_refused(keras_module):
    model_config = ModelConfig(input_shape=[4], layers=[{"Dense": {"units": 2}}, {"Dense": {"units": 2, "name": "dense"}}])
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: layer name 'dense' is already used by model.layers\[0\]"):
        build_model(model_config)


def test_the_input_name_is_reserved(keras_module):
    model_config = ModelConfig(input_shape=[4], layers=[{"Dense": {"units": 2, "name": "input"}}])
    with pytest.raises(ConfigError, match="'input' is taken by the model's input"):
        build_model(model_config)


def test_impossible_shapes_fail_before_keras(keras_module):
    model_config = ModelConfig(input_shape=[3, 3, 1], layers=[{"Conv2D": {"filters": 2, "kernel_size": 5}}])
    with pytest.raises(ShapeError, match=r"model.layers\[0\] \(Conv2D\)"):
        build_model(model_config)


def test_arguments_reach_the_keras_layers(keras_module):
    model = build_model(ModelConfig(input_shape=[9, 9, 2], layers=[
        {"Conv2D": {"filters": 4, "kernel_size": [3, 1], "strides": 2, "padding": "same", "use_bias": False,
                    "kernel_initializer": "he_normal", "kernel_regularizer": "l1l2", "kernel_constraint": "max_norm"}},
        {"Dropout": {"rate": 0.3, "seed": 7}},
        {"Flatten": {"trainable": False}},
        {"Dense": {"units": 3, "activation": "softmax", "name": "out"}},
    ]), name="custom")
    conv, dropout, flatten, dense = model.layers
    assert model.name == "custom"
    assert (conv.kernel_size, conv.strides, conv.padding, conv.use_bias) == ((3, 1), (2, 2), "same", False)
    assert isinstance(conv.kernel_initializer, keras_module.initializers.HeNormal)
    assert isinstance(conv.kernel_regularizer, keras_module.regularizers.L1L2)
    assert isinstance(conv.kernel_constraint, keras_module.constraints.MaxNorm)
    assert (dropout.rate, dropout.seed) == (0.3, 7)
    assert flatten.trainable is False and dense.name == "out"


def test_the_model_runs_forward(keras_module):
    model = build_model(SMALL)
    output = np.asarray(model(np.zeros((2, 6, 6, 2), dtype="float32")))
    assert output.shape == (2, 4)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, rtol=1e-5)


def test_float32_output_under_mixed_bfloat16(keras_module, mixed_bfloat16):
    model = build_model(SMALL, float32_output=True)
    assert [layer.dtype_policy.name for layer in model.layers] == ["mixed_bfloat16", "mixed_bfloat16", "float32"]
    assert model.layers[-1].compute_dtype == "float32"
    assert all(weight.dtype == "float32" for weight in model.weights)  # variables stay float32
    assert model.count_params() == build_model(SMALL).count_params()
    output = model(np.zeros((1, 6, 6, 2), dtype="float32"))
    assert output.dtype == "float32"


def test_without_float32_output_the_last_layer_follows_the_policy(keras_module, mixed_bfloat16):
    model = build_model(SMALL)
    assert model.layers[-1].dtype_policy.name == "mixed_bfloat16"


def test_the_global_policy_was_restored(keras_module):
    # Runs after the two tests above in file order; a leaked policy would change every later model.
    assert keras_module.mixed_precision.global_policy().name == "float32"


def test_mixed_float16_compiles_with_loss_scaling():
    import keras
    from conftest import MINIMAL_YAML

    from cnnctl.compile import make_optimizer
    from cnnctl.config import config_from_yaml_text
    from cnnctl.model import build_model

    config = config_from_yaml_text(MINIMAL_YAML, "tiny.yaml")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(config.model, float32_output=True)
        model.compile(optimizer=make_optimizer(config.train.optimizer, 1, 1), loss="sparse_categorical_crossentropy")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.layers[0].compute_dtype == "float16"
        assert model.layers[-1].compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


LOGITS = ModelConfig(input_shape=[6, 6, 2], layers=[
    {"Conv2D": {"filters": 3, "kernel_size": 3, "activation": "relu"}}, {"Flatten": {}}, {"Dense": {"units": 4}}])


def test_a_logits_model_gets_a_float32_softmax_on_the_same_weights(keras_module, mixed_bfloat16):
    model = build_model(LOGITS, float32_output=True)
    wrapped = probability_model(model, from_logits=True)
    x = np.random.default_rng(0).random((5, 6, 6, 2), dtype=np.float32)
    logits = np.asarray(model(x), dtype=np.float64)
    probabilities = np.asarray(wrapped(x))
    assert probabilities.dtype == np.float32 and wrapped.output_shape == (None, 4)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert wrapped.count_params() == model.count_params()
    for weight in model.layers[-1].weights:  # the weights are shared: the wrapper follows the model
        weight.assign(np.zeros(weight.shape))
    np.testing.assert_allclose(np.asarray(wrapped(x)), 0.25, atol=1e-7)


def test_a_model_of_probabilities_is_left_as_it_is(keras_module):
    model = build_model(SMALL)
    assert probability_model(model, from_logits=False) is model
    wrapped = probability_model(build_model(LOGITS), from_logits=True)
    assert probability_model(wrapped, from_logits=True) is wrapped  # already ends in a softmax: never twice

