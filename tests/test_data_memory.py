"""cnnctl.data.memory: 64-byte-aligned arrays and host tensors that share their memory, and batches read out
of a memory map (the image cache) that give its pages back."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from cnnctl.data.decode import npy_header
from cnnctl.data.memory import ALIGNMENT, MapReader, aligned, host_tensor


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


# ---------------------------------------------------------------- MapReader: batches out of a memory map


def mapped(path, array: np.ndarray) -> np.memmap:
    """`array` written to `path` as a .npy, memory-mapped back (as the image cache is)."""
    np.save(path, array)
    return np.load(path, mmap_mode="r")


def test_map_reader_gathers_the_rows_asked_for(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 2), dtype=np.uint8)
    x = mapped(tmp_path / "x.npy", array)
    reader = MapReader(x, release_bytes=100)  # released after nearly every batch: later reads map it again
    for indices in ([0, 1, 2], [49, 3, 3, 17], list(range(50)), [5]):
        batch = reader.gather(np.asarray(indices, dtype=np.int64))
        assert batch.dtype == np.uint8 and batch.shape == (len(indices), 3, 4, 2)
        assert np.array_equal(batch, array[indices]) and not np.shares_memory(batch, x)
    flat = x.reshape(50, 24)  # a model input of another rank: still the same map
    assert MapReader(flat)._map is x._mmap and np.array_equal(MapReader(flat).gather(np.array([7])), array[7:8].reshape(1, 24))
    MapReader(array).release()  # an array in memory: nothing to release


def resident_file_kb() -> int:
    """Pages of mapped files this process holds (RssFile, + RssShmem for a file on tmpfs), in kB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return sum(int(fields[key].split()[0]) for key in ("RssFile", "RssShmem"))


@pytest.mark.skipif(not Path("/proc/self/status").is_file() or not hasattr(mmap, "MADV_DONTNEED"),
                    reason="needs Linux's /proc/self/status and madvise")
def test_map_reader_gives_back_the_pages_it_read(tmp_path):
    rows, row = 1024, 64 * 1024  # 64 MB
    path = tmp_path / "big.npy"
    with open(path, "wb") as handle:  # written, not mapped: the pages are in the page cache, not in this process
        handle.write(npy_header((rows, row)))
        for start in range(0, rows, 64):
            handle.write(np.full((64, row), start % 251, np.uint8).tobytes())
    x = np.load(path, mmap_mode="r")
    reader = MapReader(x, release_bytes=1 << 40)  # released only when asked
    before = resident_file_kb()
    for start in range(0, rows, 64):
        batch = reader.gather(np.arange(start, start + 64))
        assert batch[0, 0] == start % 251
        del batch
    grown = resident_file_kb() - before
    assert grown > 48 * 1024, f"reading the whole map grew RssFile by {grown} kB only"
    reader.release()
    assert resident_file_kb() - before < 8 * 1024, "the pages were not given back"

    bounded = MapReader(x, release_bytes=8 << 20)  # released every 8 MB read
    before = resident_file_kb()
    peak = 0
    for start in range(0, rows, 64):
        bounded.gather(np.arange(start, start + 64))
        peak = max(peak, resident_file_kb() - before)
    assert peak < 24 * 1024, f"RssFile grew by {peak} kB while reading with release_bytes 8 MB"
