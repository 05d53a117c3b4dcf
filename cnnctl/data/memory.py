"""Arrays TensorFlow can read in place: 64-byte-aligned numpy arrays and tensors over their memory.

`tf.constant(x)` or `Dataset.from_tensor_slices(x)` copies a numpy array (measured here: a 153 MB
uint8 array costs 306 MB more RSS either way). A tensor made from the array through DLPack reads
the array's own memory instead, which TensorFlow's CPU kernels accept only when it is aligned as
Eigen requires (64 bytes with AVX-512): `aligned` makes sure of that, once, when data is loaded.
"""

from __future__ import annotations

import numpy as np

ALIGNMENT = 64  # EIGEN_MAX_ALIGN_BYTES on AVX-512 builds; an unaligned tensor aborts the process


def is_aligned(array: np.ndarray) -> bool:
    return array.size == 0 or array.ctypes.data % ALIGNMENT == 0


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when it is C-contiguous, writable and 64-byte aligned; else such a copy of it."""
    if array.flags.c_contiguous and array.flags.writeable and is_aligned(array):
        return array
    buffer = np.empty(array.nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-buffer.ctypes.data) % ALIGNMENT
    out = buffer[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def host_tensor(array: np.ndarray):
    """A host (CPU) tf.Tensor reading `array`'s memory, no copy when `array` is already `aligned`.

    The tensor keeps the array alive; neither may be written to while the other is in use.
    """
    import tensorflow as tf

    array = aligned(array)
    if array.size == 0:
        return tf.constant(array)
    with tf.device("/cpu:0"):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
