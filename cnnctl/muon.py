"""Muon for convolution kernels: Keras' `keras.optimizers.Muon`, applied to kernels of any rank as Keller
Jordan's reference does (github.com/KellerJordan/Muon, and airbench94_muon in
github.com/KellerJordan/cifar10-airbench).

Keras' Muon orthogonalises 2-D variables only and gives every other one, a convolution's 4-D kernel
included, to AdamW. Here a kernel of rank 2 or more is one matrix, its input axes (kernel rows, columns and
input channels) by its output channels, whose momentum is orthogonalised by Keras' own Newton-Schulz
iteration; variables of rank 0 or 1 (biases, BatchNorm) still go to Keras' AdamW. `normalize_weights`
rescales each such kernel to the norm sqrt(output channels) before its step, as airbench94_muon does for
convolutions followed by BatchNorm (whose output does not depend on the kernel's scale).
"""

from __future__ import annotations

import re

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cnnctl")
class Muon(keras.optimizers.Muon):
    """`keras.optimizers.Muon` with every kernel of rank >= 2 orthogonalised as one matrix (see module)."""

    def __init__(self, *args, normalize_weights: bool = False, **kwargs):
        if kwargs.get("rms_rate") == 0:  # cnnctl's config says "no scaling" as 0 (a YAML null is not written back)
            kwargs["rms_rate"] = None
        super().__init__(*args, **kwargs)
        self.normalize_weights = bool(normalize_weights)

    def _should_use_adamw(self, variable) -> bool:
        if len(variable.shape) < 2:
            return True
        if self.exclude_embeddings and "embedding" in variable.path.lower():
            return True
        return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)

    def _muon_update_step(self, gradient, variable, lr, m):
        self.assign_add(m, ops.add(gradient, m * (self.momentum - 1)))
        g = ops.add(gradient, self.momentum * m) if self.nesterov else m
        shape = tuple(variable.shape)
        matrix = ops.reshape(g, (-1, shape[-1]))  # (fan-in, output channels)
        update = self.zeropower_via_newtonschulz5(matrix, self.ns_steps)
        if self.rms_rate is not None:  # Keras' (Moonlight's) scale, from the matrix's sides
            update = update * (max(matrix.shape) ** 0.5 * self.rms_rate)
        if self.normalize_weights:
            scale = ops.cast(shape[-1] ** 0.5, variable.dtype) / (ops.norm(ops.reshape(variable, (-1,))) + 1e-12)
            self.assign(variable, variable * scale)
        self.assign_sub(variable, ops.cast(lr, variable.dtype) * ops.reshape(update, shape))

    def get_config(self) -> dict:
        return {**super().get_config(), "normalize_weights": self.normalize_weights}
