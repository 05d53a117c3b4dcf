"""Faster equivalents, for training on a CPU, of two Keras ops that cost most of a conv -> pool ->
BatchNorm -> GELU network's step time there (measured: bench/results/*-torch-speed.md).

- GELU: Keras computes the exact GELU and its gradient as a dozen separate element-wise TensorFlow ops,
  each a pass over memory. Here the same formula, x * Phi(x), and its derivative Phi(x) + x * phi(x) are
  each one XLA-fused kernel (only these element-wise functions are compiled; the convolutions stay on
  oneDNN, which XLA on a CPU is ~10x slower than).
- BatchNorm in training: Keras computes batch moments and the normalisation as separate ops (and in
  float32 under mixed precision); TensorFlow's fused batch-norm kernel does it in one pass each way.

`speed_up(model)` swaps them into a built model in place. Weights, variables, the saved config ("gelu",
BatchNormalization) and inference are unchanged, so checkpoints and exports are plain Keras; outputs
agree with Keras' to rounding (tests/test_fastops.py).
"""

from __future__ import annotations

import types

import keras

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_ops = None


def _compiled():
    global _ops
    if _ops is None:
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def forward(x):
            xf = tf.cast(x, tf.float32)
            return tf.cast(0.5 * xf * (1.0 + tf.math.erf(xf * _SQRT_HALF)), x.dtype)

        @tf.function(jit_compile=True)
        def backward(x, upstream):
            xf = tf.cast(x, tf.float32)
            cdf = 0.5 * (1.0 + tf.math.erf(xf * _SQRT_HALF))
            pdf = tf.exp(-0.5 * xf * xf) * _INV_SQRT_2PI
            return tf.cast(tf.cast(upstream, tf.float32) * (cdf + xf * pdf), x.dtype)

        @tf.custom_gradient
        def gelu(x):
            return forward(x), lambda upstream: backward(x, upstream)

        _ops = gelu
    return _ops


def gelu(x):
    """The exact GELU, x * Phi(x), with a fused forward and backward kernel. Named `gelu`, so a layer using
    it saves as Keras' own "gelu"."""
    return _compiled()(x)


def _fused_batch_norm_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call with TensorFlow's fused kernel for training on channels-last images; every
    other case (inference, frozen layers, other shapes) is Keras' own call."""
    import tensorflow as tf

    if not (training and self.trainable) or len(inputs.shape) != 4 or self.axis not in (-1, 3) or mask is not None:
        return type(self).call(self, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
    offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, epsilon=self.epsilon,
                                                                is_training=True)
    # the kernel returns the unbiased (n - 1) batch variance; Keras' moving variance averages the biased one
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
    momentum = self.momentum
    self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
    self.moving_variance.assign(self.moving_variance * momentum
                                + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum))
    return outputs


def speed_up(model) -> list[str]:
    """Swap the fast GELU and fused BatchNorm into `model`'s layers (TensorFlow only); returns what changed,
    e.g. ["gelu x7", "BatchNormalization x6"]."""
    if keras.backend.backend() != "tensorflow":
        return []
    gelus = norms = 0
    for layer in model.layers:
        if getattr(layer, "activation", None) is keras.activations.gelu:
            layer.activation = gelu
            gelus += 1
        if type(layer) is keras.layers.BatchNormalization and not getattr(layer, "synchronized", False) \
                and not getattr(layer, "renorm", False):
            layer.call = types.MethodType(_fused_batch_norm_call, layer)
            norms += 1
    return [f"{name} x{n}" for name, n in (("gelu", gelus), ("BatchNormalization", norms)) if n]
