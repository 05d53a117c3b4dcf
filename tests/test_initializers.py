"""cnnctl's Conv2D initialisers: dirac (identity) and whitening (from the training images)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl.errors import ConfigError
from cnnctl.schema import ModelConfig


def test_dirac_passes_each_channel_through_and_the_extra_filters_are_random(keras_module):
    from cnnctl.initializers import Dirac

    kernel = np.asarray(Dirac(seed=1)((3, 3, 4, 6)))
    x = np.random.default_rng(0).random((2, 7, 7, 4), dtype=np.float32)
    y = np.asarray(keras_module.ops.conv(x, kernel, padding="same"))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
    assert np.abs(kernel[..., 4:]).max() > 0  # glorot-uniform beyond the identity part


def test_dirac_refuses_a_dense_kernel(keras_module):
    from cnnctl.initializers import Dirac

    with pytest.raises(ValueError, match="Conv2D kernel"):
        Dirac()((4, 4))


def test_a_dirac_model_saves_and_loads_with_its_weights(keras_module, tmp_path):
    from cnnctl.model import build_model, load_model

    model = build_model(ModelConfig(input_shape=[6, 6, 2], layers=[
        {"Conv2D": {"filters": 2, "kernel_size": 3, "padding": "same", "kernel_initializer": "dirac"}},
        {"Flatten": {}}, {"Dense": {"units": 3}}]))
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config()["kernel_initializer"]["class_name"] == "Dirac"
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())


def correlated_images(n=600, seed=0) -> np.ndarray:
    """uint8 RGB images whose neighbouring pixels and channels are strongly correlated, as photographs are."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 9, 9, 1))
    smooth = (base[:, :-1, :-1] + base[:, 1:, :-1] + base[:, :-1, 1:] + base[:, 1:, 1:]) / 4
    rgb = np.concatenate([smooth, 0.8 * smooth + 0.2 * rng.random(smooth.shape), smooth ** 2], axis=3)
    return (rgb * 255).astype(np.uint8)


def test_whitening_decorrelates_the_patches_of_the_training_images(keras_module):
    from cnnctl.model import build_model

    config = ModelConfig(input_shape=[8, 8, 3], layers=[
        {"Conv2D": {"filters": 24, "kernel_size": 2, "kernel_initializer": "whitening"}},
        {"Flatten": {}}, {"Dense": {"units": 3}}])
    images = correlated_images()
    model = build_model(config, training_images=images, seed=0)
    outputs = np.asarray(model.layers[0](images.astype(np.float32) / 255.0)).reshape(-1, 24)[:, :12]
    assert np.abs(outputs.mean(axis=0)).max() < 1e-3  # centred by the bias
    covariance = np.cov(outputs, rowvar=False)
    # uncorrelated, with variance λ / (λ + eps) along each eigenvector: 1 but for the eps that keeps the
    # smallest eigenvalues from exploding
    x = images.astype(np.float64) / 255.0
    patches = np.stack([x[:, i:i + 7, j:j + 7, :] for i in (0, 1) for j in (0, 1)], axis=3).reshape(-1, 12)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(patches, rowvar=False)))[::-1]
    np.testing.assert_allclose(np.diag(covariance), eigenvalues / (eigenvalues + 5e-4), atol=0.01)
    assert np.diag(covariance)[0] > 0.99
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.01
    negatives = np.asarray(model.layers[0].kernel)[..., 12:]
    np.testing.assert_array_equal(negatives, -np.asarray(model.layers[0].kernel)[..., :12])


def test_whitening_is_drawn_from_the_seed(keras_module):
    from cnnctl.model import build_model

    config = ModelConfig(input_shape=[8, 8, 3], layers=[
        {"Conv2D": {"filters": 6, "kernel_size": 2, "kernel_initializer": "whitening"}}, {"Flatten": {}},
        {"Dense": {"units": 3}}])
    images = correlated_images(n=9000)
    kernels = [np.asarray(build_model(config, training_images=images, seed=s).layers[0].kernel) for s in (0, 0, 1)]
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert not np.array_equal(kernels[0], kernels[2])  # 5,000 of 9,000 images: another sample


def test_whitening_after_other_layers_sees_their_outputs_and_a_grouped_conv_is_refused(keras_module):
    from cnnctl.model import build_model

    after = ModelConfig(input_shape=[8, 8, 3], layers=[
        {"Conv2D": {"filters": 3, "kernel_size": 1}},
        {"Conv2D": {"filters": 12, "kernel_size": 2, "kernel_initializer": "whitening", "use_bias": False}},
        {"Flatten": {}}, {"Dense": {"units": 3}}])
    model = build_model(after, training_images=correlated_images(), seed=0)
    assert np.abs(np.asarray(model.layers[1].kernel)).max() > 0
    grouped = ModelConfig(input_shape=[8, 8, 4], layers=[
        {"Conv2D": {"filters": 4, "kernel_size": 2, "groups": 2, "kernel_initializer": "whitening"}},
        {"Flatten": {}}, {"Dense": {"units": 3}}])
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(Conv2D\): kernel_initializer whitening needs groups 1"):
        build_model(grouped, training_images=np.zeros((10, 8, 8, 4), np.uint8), seed=0)


def test_without_training_images_a_whitening_kernel_is_zeros_until_set(keras_module):
    from cnnctl.model import build_model

    model = build_model(ModelConfig(input_shape=[8, 8, 3], layers=[
        {"Conv2D": {"filters": 4, "kernel_size": 2, "kernel_initializer": "whitening"}}, {"Flatten": {}},
        {"Dense": {"units": 3}}]))
    assert not np.asarray(model.layers[0].kernel).any()
