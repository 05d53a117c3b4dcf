"""cnnctl.data itself: what `load_splits` does whatever the source (the --smoke switch, the validation
modes, aligned arrays), `check_available`, and an import without TensorFlow.

The sources and pipelines have their own files: test_data_arrays.py (synthetic data, npz, shapes and
classes), test_data_builtin.py, test_data_folders.py, test_data_pipeline.py and test_data_memory.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import load, write_mnist

from cnnctl import data
from cnnctl.data import builtin
from cnnctl.data.memory import ALIGNMENT
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

pytestmark = pytest.mark.usefixtures("isolated")


# ---------------------------------------------------------------- the --smoke switch and validation modes


def test_smoke_flag_replaces_any_dataset_with_synthetic_data(tmp_path):
    s = load("mnist", input_shape=(28, 28, 1), num_classes=10, smoke=True, data_dir=tmp_path)
    assert s.identity["dataset"] == "synthetic" and s.x_train.shape == (512, 28, 28, 1)


def test_validation_test_uses_the_test_arrays_without_a_copy():
    s = load(num_classes=2, validation="test")
    assert s.x_val is s.x_test and s.y_val is s.y_test
    assert s.identity["val_examples"] == 128


def test_unknown_validation_mode_and_empty_split():
    with pytest.raises(DataError, match="validation"):
        load(num_classes=2, validation="holdout")
    with pytest.raises(DataError, match="empty"):
        load(num_classes=2, validation="split", synthetic={"train_examples": 1})


# ---------------------------------------------------------------- aligned arrays and imports


def test_load_splits_returns_aligned_arrays(tmp_path):
    x = np.zeros((21, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(21) % 3, x_test=x[:5], y_test=np.arange(5) % 3)
    splits = data.load_splits(DataConfig(dataset="npz", root=str(tmp_path / "d.npz")), input_shape=(4, 4, 1),
                              num_classes=3, validation="split", validation_split=0.2, seed=0)
    arrays = [splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test, splits.y_test]
    assert all(a.ctypes.data % ALIGNMENT == 0 and a.flags.c_contiguous for a in arrays)


def test_importing_data_does_not_import_tensorflow():
    code = "import cnnctl.data, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------- check_available


def test_check_available_passes_when_the_files_are_there(tmp_path):
    write_mnist(tmp_path / "here" / "mnist.npz")
    assert data.check_available(DataConfig(dataset="mnist"), data_dir=tmp_path / "here") is None
    assert data.check_available(DataConfig(dataset="mnist", root=str(tmp_path / "here"))) is None


def test_check_available_offline_fails_fast_naming_the_files_and_places(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        data.check_available(DataConfig(dataset="cifar10"), data_dir=tmp_path / "mine")
    assert time.monotonic() - started < 5
    message = str(info.value)
    for text in ("cifar-10-python.tar.gz", str(tmp_path / "mine"), "Downloads are off (CNNCTL_OFFLINE)"):
        assert text in message


def test_check_available_leaves_a_reachable_download_to_the_loader(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNCTL_OFFLINE")
    monkeypatch.setattr(builtin, "_reachable", lambda host, timeout: True)
    assert data.check_available(DataConfig(dataset="fashion_mnist")) is None
    assert not (tmp_path / "keras").exists()  # nothing downloaded yet


@pytest.mark.parametrize("dataset", ["synthetic", "npz", "directory"])
def test_check_available_leaves_other_sources_to_the_loader(tmp_path, dataset):
    assert data.check_available(DataConfig(dataset=dataset, root=str(tmp_path / "missing"))) is None
