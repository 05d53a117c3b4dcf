"""A run directory is all later commands need: the data is found where the run found it, and checked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, SHARED_DATASETS, tiny_config, write_config

from cnnctl import rundata
from cnnctl.config import load_config


def write_npz(path: Path, seed: int = 0, train: int = 48, test: int = 16) -> Path:
    """A small learnable dataset of 12x12 gray images in 3 classes, as an .npz of uint8 arrays."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(32, 224, size=(3, 12, 12), dtype=np.int16)

    def draw(count):
        y = rng.integers(0, 3, count).astype(np.uint8)
        x = np.clip(templates[y] + rng.integers(-30, 31, size=(count, 12, 12)), 0, 255).astype(np.uint8)
        return x, y

    (x_train, y_train), (x_test, y_test) = draw(train), draw(test)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# ---------------------------------------------------------------- the recorded identity


def test_the_location_of_each_kind_of_dataset():
    assert rundata.recorded_location({"dataset": "mnist", "files": [{"path": "/d/mnist.npz"}]}) == Path("/d")
    assert rundata.recorded_location({"dataset": "npz", "files": [{"path": "/d/x.npz"}]}) == Path("/d/x.npz")
    assert rundata.recorded_location({"dataset": "directory", "files": [{"path": "/d/cats"}]}) == Path("/d/cats")
    assert rundata.recorded_location({"dataset": "synthetic", "files": []}) is None
    assert rundata.recorded_location({}) is None


def test_differences_ignore_where_the_files_are_but_not_what_they_hold():
    recorded = {"dataset": "npz", "num_classes": 3,
                "files": [{"path": "/old/x.npz", "bytes": 10, "sha256": "a" * 64}]}
    moved = {"dataset": "npz", "num_classes": 3, "files": [{"path": "/new/x.npz", "bytes": 10, "sha256": "a" * 64}]}
    assert rundata.differences(recorded, moved) == []
    changed = {"dataset": "npz", "num_classes": 4, "files": [{"path": "/new/x.npz", "bytes": 12, "sha256": "b" * 64}]}
    problems = rundata.differences(recorded, changed)
    assert problems[0] == "num_classes was 3, is 4"
    assert "/new/x.npz: bytes was 10, is 12" in problems and any("sha256" in p for p in problems)


def test_trained_on_names_the_file_and_its_checksum():
    identity = {"dataset": "mnist", "files": [{"path": "/d/mnist.npz", "bytes": 11490434, "sha256": "731c" + "0" * 60}]}
    assert rundata.trained_on(identity) == "the run was trained on mnist from /d/mnist.npz (11,490,434 bytes, " \
                                           "sha256 731c00000000…)"
    folder = {"dataset": "directory", "files": [{"path": "/d/pets", "bytes": 2048, "images": 12}]}
    assert rundata.trained_on(folder).endswith("/d/pets (2,048 bytes, 12 images)")


# ---------------------------------------------------------------- commands on a run, from elsewhere


@pytest.fixture
def npz_run(tmp_path, cli, monkeypatch):
    """A run trained on data/tiny.npz given as a *relative* --data-dir, then the working directory changes."""
    project = tmp_path / "project"
    write_npz(project / "data" / "tiny.npz")
    config = write_config(project / "tiny.yaml", tiny_config(data={"dataset": "npz"}, train={"epochs": 1}))
    monkeypatch.chdir(project)
    result = cli("train", config.name, "--data-dir", "data/tiny.npz", "--quiet")
    assert result.exit_code == 0, result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return project / "runs" / "tiny"


def test_the_manifest_records_where_the_data_was_found(npz_run):
    manifest = json.loads((npz_run / "manifest.json").read_text())
    (record,) = manifest["dataset"]["files"]
    assert record["path"] == str(npz_run.parent.parent / "data" / "tiny.npz") and len(record["sha256"]) == 64


def test_evaluate_predict_export_and_resume_need_no_data_dir(npz_run, cli, tmp_path):
    result = cli("evaluate", npz_run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["examples"] == 16
    assert cli("export", npz_run, "--format", "keras").exit_code == 0
    exported = json.loads((npz_run / "manifest.json").read_text())
    assert exported["status"] == "completed"
    resumed = cli("train", "--resume", npz_run, "--set", "train.epochs=2", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert [int(line.split(",")[0]) for line in (npz_run / "metrics.csv").read_text().splitlines()[1:]] == [1, 2]


def test_changed_data_is_refused_with_what_the_run_was_trained_on(npz_run, cli):
    data = npz_run.parent.parent / "data" / "tiny.npz"
    before = (npz_run / "eval.json").read_bytes()
    write_npz(data, seed=1)
    result = cli("evaluate", npz_run)
    assert result.exit_code == 2
    assert f"the run was trained on npz from {data}" in result.output and "is not the same" in result.output
    assert "sha256" in result.output and "Traceback" not in result.output
    assert (npz_run / "eval.json").read_bytes() == before  # nothing of the run was replaced


def test_moved_data_says_where_it_was_and_where_cnnctl_looked(npz_run, cli, tmp_path):
    data = npz_run.parent.parent / "data" / "tiny.npz"
    moved = tmp_path / "moved" / "tiny.npz"
    moved.parent.mkdir()
    shutil.move(data, moved)
    result = cli("evaluate", npz_run)
    assert result.exit_code == 2
    assert f"the run was trained on npz from {data}" in result.output and "not an .npz file" in result.output
    found = cli("evaluate", npz_run, "--data-dir", moved, "--json")  # --data-dir still overrides
    assert found.exit_code == 0, found.output


def test_a_smoke_run_needs_no_data_at_all(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "tiny.yaml", tiny_config(data={"dataset": "mnist"}))
    assert cli("train", config, "--smoke", "--quiet").exit_code == 0
    config_, splits = rundata.test_split(tmp_path / "runs" / "tiny")
    assert config_.data.dataset == "synthetic" and len(splits.x_test) == 16


def test_load_uses_the_model_outputs_as_the_class_count(tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(classes=5)))
    assert rundata.load(config, smoke=True).identity["num_classes"] == 5


# ---------------------------------------------------------------- the README's own commands


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "mnist.npz").is_file(), reason="no ../shared/datasets/mnist.npz")
def test_the_readme_sequence_on_real_mnist(tmp_path, cli, monkeypatch):
    """`cnnctl train configs/mnist.yaml --data-dir ../shared/datasets`, then evaluate / predict / export /
    resume on runs/mnist with no --data-dir (one epoch instead of five, to keep the suite quick)."""
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    shutil.copy(CONFIGS / "mnist.yaml", checkout / "configs" / "mnist.yaml")
    monkeypatch.chdir(checkout)
    data_dir = os.path.relpath(SHARED_DATASETS, checkout)
    result = cli("train", "configs/mnist.yaml", "--data-dir", data_dir, "--set", "train.epochs=1", "--quiet")
    assert result.exit_code == 0, result.output
    evaluated = cli("evaluate", "runs/mnist", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["examples"] == 10_000 and json.loads(evaluated.output)["accuracy"] > 0.9
    from PIL import Image

    with np.load(SHARED_DATASETS / "mnist.npz") as mnist:
        Image.fromarray(mnist["x_test"][0]).save(checkout / "seven.png")
    predicted = cli("predict", "runs/mnist", "seven.png", "--json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.output)[0]["top"][0]["class"] == "7"
    exported = cli("export", "runs/mnist", "--format", "keras")
    assert exported.exit_code == 0 and "test images" in exported.output, exported.output
    resumed = cli("train", "--resume", "runs/mnist", "--set", "train.epochs=2", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((checkout / "runs" / "mnist" / "manifest.json").read_text())["epochs_run"] == 2
