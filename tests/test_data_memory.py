"""cnnctl.data.memory: 64-byte-aligned arrays and host tensors that share their memory."""

from __future__ import annotations

import numpy as np

from cnnctl.data.memory import ALIGNMENT, aligned, host_tensor


def test_aligned_copies_only_when_needed():
    whole = np.arange(1000, dtype=np.uint8)
    view = whole[1:]  # 1 byte past an allocation: not 64-byte aligned
    assert view.ctypes.data % ALIGNMENT != 0
    copy = aligned(view)
    assert copy.ctypes.data % ALIGNMENT == 0 and np.array_equal(copy, view) and copy.flags.writeable
    assert aligned(copy) is copy
    frozen = np.frombuffer(bytes(128), dtype=np.uint8)  # read-only: DLPack cannot export it
    assert aligned(frozen).flags.writeable
    assert aligned(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_host_tensor_shares_memory_and_outlives_the_name():
    import gc

    import tensorflow as tf

    x = aligned(np.arange(64 * 3, dtype=np.uint8).reshape(64, 3))
    tensor = host_tensor(x)
    x[0, 0] = 200
    assert int(tensor[0, 0]) == 200  # the same memory
    expected = x.copy()
    del x
    gc.collect()
    assert np.array_equal(tensor.numpy(), expected) and "CPU" in tensor.device  # the tensor keeps it alive
    assert tf.reduce_sum(tf.cast(host_tensor(np.arange(5, dtype=np.int64)[1:]), tf.int32)) == 10  # unaligned view
