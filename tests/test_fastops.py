"""The fast GELU and fused BatchNorm swapped in for training agree with Keras' own, and save as Keras' own."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from cnnctl.schema import ModelConfig


def test_gelu_and_its_gradient_match_keras(keras_module):
    import tensorflow as tf

    from cnnctl.fastops import gelu

    x = tf.constant(np.linspace(-6, 6, 1001, dtype=np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = gelu(x), keras_module.activations.gelu(x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(), tape.gradient(theirs, x).numpy(), atol=1e-5)
    half = gelu(tf.cast(x, tf.bfloat16))
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(half, tf.float32).numpy(), theirs.numpy(), atol=0.05, rtol=0.01)


def norm_model(keras_module):
    from cnnctl.model import build_model

    return build_model(ModelConfig(input_shape=[6, 6, 3], layers=[
        {"Conv2D": {"filters": 5, "kernel_size": 3, "activation": "gelu"}},
        {"BatchNormalization": {"momentum": 0.6, "scale": False}},
        {"Activation": {"activation": "gelu"}}, {"Flatten": {}}, {"Dense": {"units": 2}}]))


def test_fused_batchnorm_trains_as_keras_does(keras_module):
    from cnnctl import fastops

    x = np.random.default_rng(0).normal(2.0, 3.0, (32, 6, 6, 3)).astype(np.float32)
    plain, fast = norm_model(keras_module), norm_model(keras_module)
    fast.set_weights(plain.get_weights())
    assert fastops.speed_up(fast) == ["gelu x2", "BatchNormalization x1"]
    np.testing.assert_allclose(fast(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-4)
    for ours, theirs in zip(fast.layers[1].non_trainable_weights, plain.layers[1].non_trainable_weights, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)  # the moving statistics
    np.testing.assert_allclose(fast(x, training=False).numpy(), plain(x, training=False).numpy(), atol=1e-4)


def test_a_sped_up_model_saves_as_plain_keras(keras_module, tmp_path):
    from cnnctl import fastops

    model = norm_model(keras_module)
    fastops.speed_up(model)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    assert [(entry["class_name"], entry["config"].get("activation")) for entry in layers[1:4]] == [
        ("Conv2D", "gelu"), ("BatchNormalization", None), ("Activation", "gelu")]


def test_frozen_batchnorm_keeps_its_statistics(keras_module):
    from cnnctl import fastops

    model = norm_model(keras_module)
    fastops.speed_up(model)
    model.layers[1].trainable = False
    before = [w.numpy() for w in model.layers[1].non_trainable_weights]
    model(np.ones((4, 6, 6, 3), np.float32), training=True)
    for now, then in zip(model.layers[1].non_trainable_weights, before, strict=True):
        np.testing.assert_array_equal(now.numpy(), then)


@pytest.mark.parametrize("backend_name", ["jax"])
def test_other_backends_are_left_alone(keras_module, monkeypatch, backend_name):
    from cnnctl import fastops

    monkeypatch.setattr(fastops.keras.backend, "backend", lambda: backend_name)
    assert fastops.speed_up(norm_model(keras_module)) == []
