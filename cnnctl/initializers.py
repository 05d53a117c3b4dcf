"""cnnctl's own initialisers for Conv2D kernels (`kernel_initializer: dirac | whitening`).

`dirac` is a registered Keras initializer, so a saved model names it and loads back. `whitening` depends on
the training images: the layer is built with zeros, then `whiten(model, images)` sets its kernel and bias
from those images before training (airbench's first layer). Both come from David Page's and Keller
Jordan's CIFAR-10 recipes.
"""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="cnnctl")
class Dirac(keras.initializers.Initializer):
    """A Conv2D kernel that passes input channel i to output channel i at the kernel's centre (PyTorch's
    `dirac_`), for the first min(in, out) output channels; any further output channels are glorot-uniform,
    as Keras' default kernel. An identity-initialised stack starts as a (nearly) linear map of its input."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        if len(shape) != 4:
            raise ValueError(f"dirac initialises a Conv2D kernel (height, width, in, out), not shape {tuple(shape)}")
        kh, kw, cin, cout = (int(d) for d in shape)
        kernel = keras.ops.convert_to_numpy(keras.initializers.GlorotUniform(seed=self.seed)(shape, "float32"))
        n = min(cin, cout)
        kernel[:, :, :, :n] = 0.0
        kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self) -> dict:
        return {"seed": self.seed}


def keras_initializer(name: str):
    """What Keras' constructor gets for a config's kernel_initializer name."""
    if name == "dirac":
        return Dirac()
    if name == "whitening":
        return "zeros"  # set by whiten() from the training images once the model is built
    return name


def whitening_layers(model_config) -> list[int]:
    """Indices of the config's layers whose kernel is initialised by whitening."""
    return [i for i, entry in enumerate(model_config.layers)
            if getattr(entry.args, "kernel_initializer", None) == "whitening"]


def whitening_kernel(inputs: np.ndarray, kernel_size: tuple[int, int], filters: int, eps: float = 5e-4):
    """(kernel, bias) of a 'valid' convolution whose outputs are the input's patches projected on the
    eigenvectors of their covariance, each divided by sqrt(eigenvalue + eps) and centred (zero mean over
    `inputs`), largest eigenvalues first; the eigenvectors and then their negatives, as airbench
    (2 x patch size filters use them all; fewer take the leading ones, more repeat them)."""
    kh, kw = kernel_size
    n, h, w, c = inputs.shape
    size = kh * kw * c
    total, outer, count = np.zeros(size), np.zeros((size, size)), 0
    for start in range(0, n, 256):  # summed over chunks: all patches of 5,000 images at once are ~0.5 GB
        x = np.asarray(inputs[start:start + 256], dtype=np.float64)
        patches = np.stack([x[:, i:i + h - kh + 1, j:j + w - kw + 1, :] for i in range(kh) for j in range(kw)],
                           axis=3).reshape(-1, size)  # (i, j, channel) order, as the kernel's
        total += patches.sum(axis=0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    scaled = vectors[:, order] / np.sqrt(values[order] + eps)  # (patch, component)
    both = np.concatenate([scaled, -scaled], axis=1)
    columns = both[:, np.arange(filters) % both.shape[1]]
    kernel = columns.reshape(kh, kw, c, filters).astype(np.float32)
    bias = -(mean @ columns).astype(np.float32)
    return kernel, bias


def whiten(model, model_config, images: np.ndarray) -> list[str]:
    """Set each whitening layer's kernel (and bias) from `images` (float, as the model sees them), through
    the layers before it; returns the layers' names. A layer without bias gets the kernel only."""
    from cnnctl.errors import ConfigError

    done = []
    for index in whitening_layers(model_config):
        layer = model.layers[index]
        if layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
            raise ConfigError([f"model.layers[{index}] (Conv2D): kernel_initializer whitening needs groups 1 and "
                               f"dilation_rate 1, got groups {layer.groups}, dilation_rate "
                               f"{tuple(layer.dilation_rate)}"])
        x = images
        for before in model.layers[:index]:
            x = keras.ops.convert_to_numpy(before(x, training=False)).astype(np.float32)
        kernel, bias = whitening_kernel(x, layer.kernel_size, layer.filters)
        layer.kernel.assign(kernel)
        if layer.use_bias:
            layer.bias.assign(bias)
        done.append(layer.name)
    return done


def whiten_from(model, model_config, images, seed: int, count: int = 5000) -> list[str]:
    """`whiten` from up to `count` of `images` (as stored: uint8 scaled by 1/255 as the pipeline does),
    drawn with `seed`; nothing to do (and nothing read) without whitening layers."""
    if not whitening_layers(model_config):
        return []
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    sample = np.asarray(images[chosen]).astype(np.float32)
    return whiten(model, model_config, sample / 255.0 if images.dtype == np.uint8 else sample)
