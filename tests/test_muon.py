"""cnnctl's Muon: convolution kernels orthogonalised as one matrix, as Jordan's reference does (the groups
that give it the kernels are tested in test_averaging)."""

from __future__ import annotations

import numpy as np
import pytest


def newton_schulz(g: np.ndarray, steps: int) -> np.ndarray:
    """Keras' (and Jordan's) quintic Newton-Schulz iteration, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def reference_steps(w, grads, lr, momentum, normalize, ns_steps=3):
    """airbench94_muon's Muon.step on a kernel, in Keras' layout (..., output channels)."""
    w, buf = w.astype(np.float64), np.zeros_like(w, dtype=np.float64)
    for g in grads:
        buf = momentum * buf + g
        update = g + momentum * buf  # nesterov
        if normalize:
            w = w * np.sqrt(w.shape[-1]) / np.linalg.norm(w)
        w = w - lr * newton_schulz(update.reshape(-1, w.shape[-1]), ns_steps).reshape(w.shape)
    return w


@pytest.mark.parametrize("normalize", [False, True])
def test_a_conv_kernel_takes_jordans_muon_step(keras_module, normalize):
    from cnnctl.muon import Muon

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    grads = [rng.normal(size=start.shape).astype(np.float32) for _ in range(3)]
    kernel = keras_module.Variable(start, name="kernel")
    optimizer = Muon(learning_rate=0.1, momentum=0.6, nesterov=True, ns_steps=3, rms_rate=None,
                     normalize_weights=normalize, weight_decay=0.0)
    for g in grads:
        optimizer.apply_gradients([(keras_module.ops.convert_to_tensor(g), kernel)])
    expected = reference_steps(start, grads, 0.1, 0.6, normalize)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=2e-3, atol=2e-4)
    if normalize:  # the step starts from norm sqrt(6), and an orthogonalised step is small beside it
        assert np.linalg.norm(kernel.numpy()) == pytest.approx(np.sqrt(6), rel=0.2)


def test_kernels_of_any_rank_get_muon_and_vectors_get_adamw(keras_module):
    from cnnctl.muon import Muon

    keras_muon, ours = keras_module.optimizers.Muon(), Muon()
    variables = {rank: keras_module.Variable(np.ones((2,) * rank, np.float32), name=f"v{rank}") for rank in (1, 2, 4)}
    assert [ours._should_use_adamw(variables[r]) for r in (1, 2, 4)] == [True, False, False]
    assert keras_muon._should_use_adamw(variables[4])  # Keras' own gives a conv kernel to AdamW


def test_rms_rate_scales_by_the_matrix_sides(keras_module):
    from cnnctl.muon import Muon

    rng = np.random.default_rng(1)
    start, g = rng.normal(size=(3, 3, 4, 6)).astype(np.float32), rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    moved = {}
    for rate in (None, 0.2):
        kernel = keras_module.Variable(start)
        Muon(learning_rate=0.1, rms_rate=rate, weight_decay=0.0).apply_gradients(
            [(keras_module.ops.convert_to_tensor(g), kernel)])
        moved[rate] = kernel.numpy() - start
    np.testing.assert_allclose(moved[0.2], moved[None] * np.sqrt(36) * 0.2, rtol=1e-4, atol=1e-6)
    assert Muon(rms_rate=0).rms_rate is None  # the config's "no scaling" (a YAML null is not written back)


def test_the_config_round_trips_through_keras_serialization(keras_module):
    from cnnctl.muon import Muon

    optimizer = Muon(learning_rate=0.2, momentum=0.6, ns_steps=3, rms_rate=None, normalize_weights=True)
    again = keras_module.optimizers.deserialize(keras_module.optimizers.serialize(optimizer))
    assert type(again) is Muon
    assert (again.normalize_weights, again.ns_steps, again.rms_rate, again.momentum) == (True, 3, None, 0.6)
