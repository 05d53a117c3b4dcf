"""Arrays TensorFlow can read in place: 64-byte-aligned numpy arrays and tensors over their memory.

`tf.constant(x)` or `Dataset.from_tensor_slices(x)` copies a numpy array (measured here: a 153 MB
uint8 array costs 306 MB more RSS either way). A tensor made from the array through DLPack reads
the array's own memory instead, which TensorFlow's CPU kernels accept only when it is aligned as
Eigen requires (64 bytes with AVX-512): `aligned` makes sure of that, once, when data is loaded.
"""

from __future__ import annotations

import mmap
import threading

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


class MapReader:
    """Batches copied out of a memory-mapped array (the image cache), with bounded resident memory.

    Pages of a file mapped into the process count in its RSS for as long as they stay mapped, so an
    epoch over a 5 GB map would end with 5 GB resident. Every `release_bytes` read, the pages are
    dropped from the mapping (madvise DONTNEED: they stay in the kernel's page cache, which the
    kernel reclaims under pressure, and the next read maps them again without reading the disk).
    """

    def __init__(self, array: np.memmap, release_bytes: int = 256 << 20):
        self.array = array
        self.release_bytes = release_bytes
        self._read = 0
        self._lock = threading.Lock()
        self._map = getattr(array, "_mmap", None)
        self._image_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize

    def gather(self, indices: np.ndarray) -> np.ndarray:
        batch = np.take(self.array, indices, axis=0)
        with self._lock:
            self._read += len(indices) * self._image_bytes
            if self._read >= self.release_bytes:
                self._read = 0
                self.release()
        return batch

    def release(self) -> None:
        """Drop the map's pages from this process (they are re-read from the page cache when needed)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._map.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # a closed map, or a platform without it: only memory is at stake
                pass
