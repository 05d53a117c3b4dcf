"""End-to-end training through the CLI on tiny synthetic data, one real-data run, and data errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, SHARED_DATASETS, stderr_of, tiny_config, write_config
from typer.testing import CliRunner

from cnnctl.cli import app

SYNTHETIC = tiny_config(
    name="syn", seed=1, dropout=0.1, data={"synthetic": {"train_examples": 96, "test_examples": 32}},
    train={"optimizer": {"name": "adam", "learning_rate": 0.01}, "loss": "categorical_crossentropy",
           "metrics": ["accuracy", "top_k_accuracy"], "top_k": 2, "epochs": 2, "validation": "split",
           "validation_split": 0.25},
    runtime={"precision": "float32"}, expect={"params": 343})

RUN_FILES = {"config.yaml", "summary.txt", "manifest.json", "metrics.csv", "history.json", "eval.json",
             "checkpoints", "tensorboard", "plots", ".lock"}


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, runner):
    """One synthetic run, shared by the assertions below (training is the slow part)."""
    root = tmp_path_factory.mktemp("train")
    config = write_config(root / "syn.yaml", SYNTHETIC)
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(root / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root, config, result


def test_run_directory_has_exactly_the_documented_files(trained):
    root, _, result = trained
    run = root / "runs" / "syn"
    present = {p.name for p in run.iterdir()}
    assert RUN_FILES <= present
    assert present - RUN_FILES == set()
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"best.keras", "last.keras", "resume.json"} <= checkpoints
    assert not [name for name in checkpoints if name.endswith(".tmp.keras")]
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert "test       accuracy" in result.output and "published  params 343: built 343 -> met" in result.output


def test_metrics_csv_has_one_row_per_epoch_with_learning_rate_and_time(trained):
    root, _, _ = trained
    with open(root / "runs" / "syn" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "top_k_accuracy", "val_accuracy", "val_loss",
                             "val_top_k_accuracy", "learning_rate", "epoch_seconds"]
    for row in rows:
        assert float(row["learning_rate"]) == pytest.approx(0.01)
        assert float(row["epoch_seconds"]) > 0
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
    history = json.loads((root / "runs" / "syn" / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["loss"]) == 2


def test_manifest_records_versions_runtime_data_and_status(trained):
    root, _, _ = trained
    manifest = json.loads((root / "runs" / "syn" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for key in ("cnnctl", "tensorflow", "keras", "python", "device", "precision", "seed", "start_time",
                "end_time", "wall_seconds", "strategy", "replicas"):
        assert manifest[key] not in (None, ""), key
    assert manifest["precision"] == "float32" and manifest["device"] == "/CPU:0" and manifest["replicas"] == 1
    assert manifest["seed"] == 1
    assert manifest["dataset"]["dataset"] == "synthetic"
    assert manifest["dataset"]["train_examples"] == 72 and manifest["dataset"]["val_examples"] == 24
    assert manifest["class_names"] == ["0", "1", "2"]
    assert manifest["epochs_run"] == 2
    assert manifest["steps_per_execution"] == 5  # auto: 72 images in batches of 16 are 5 steps


def test_eval_json_reports_test_metrics_per_class_and_confusion(trained):
    root, _, _ = trained
    report = json.loads((root / "runs" / "syn" / "eval.json").read_text())
    assert report["examples"] == 32
    assert 0.0 <= report["accuracy"] <= 1.0 and report["loss"] > 0
    assert report["top_k"] == 2 and "top_2_accuracy" in report
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 32
    assert sum(row["support"] for row in report["per_class"]) == 32
    assert report["checkpoint"] == "checkpoints/best.keras"


def test_config_yaml_in_the_run_is_the_resolved_config(trained):
    from cnnctl.config import load_config

    root, config, _ = trained
    assert load_config(root / "runs" / "syn" / "config.yaml") == load_config(config)


def test_evaluate_rewrites_only_eval_json(trained, runner):
    root, _, _ = trained
    run = root / "runs" / "syn"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "plots" not in p.parts}
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "Confusion matrix" in result.output and "Per class" in result.output
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "plots" not in p.parts}
    changed = {p.name for p in before if before[p] != after.get(p)}
    assert changed == {"eval.json", ".lock"}  # .lock: evaluate held the run's lock while writing


def test_evaluate_out_writes_elsewhere_and_json(trained, runner, tmp_path):
    root, _, _ = trained
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["evaluate", str(root / "runs" / "syn"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["examples"] == 32


def test_two_runs_with_the_same_name_get_two_directories(trained, runner):
    root, config, _ = trained
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(root / "runs"), "--quiet", "--smoke"])
    assert result.exit_code == 0, result.output
    assert (root / "runs" / "syn-2" / "manifest.json").is_file()
    assert json.loads((root / "runs" / "syn" / "manifest.json").read_text())["smoke"] is False


def test_json_mode_prints_one_object_per_epoch_then_the_result(tmp_path, runner):
    config = write_config(tmp_path / "syn.yaml", SYNTHETIC)
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["epoch", "epoch", "result"]
    assert lines[1]["epoch"] == 2 and "val_loss" in lines[1]
    assert lines[-1]["status"] == "completed" and lines[-1]["test_accuracy"] is not None


# ---------------------------------------------------------------- a model trained on logits, test-time augmentation


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_a_logits_run_reports_probabilities_with_and_without_test_time_augmentation(logits_run):
    from cnnctl import rundata
    from cnnctl.model import load_model

    run, _, output = logits_run
    report = json.loads((run / "eval.json").read_text())
    tta = report["tta"]
    assert (tta["views"], tta["translate_pixels"]) == (["flip", "translate"], 2)
    assert (report["accuracy"], report["loss"]) == (tta["accuracy_with"], tta["loss_with"])  # the headline: with
    assert f"tta        flip, translate 2 px: accuracy {tta['accuracy_with']:.4f} ({tta['accuracy_without']:.4f} " \
           "without)" in output
    assert "(best epoch 2 of 2; test-time augmentation)" in output
    # Without the views: the argmax and the cross-entropy of softmax(logits), as for a model ending in a softmax.
    _, splits = rundata.test_split(run)
    logits = np.asarray(load_model(run / "checkpoints" / "best.keras").predict(splits.x_test / np.float32(255),
                                                                               verbose=0), dtype=np.float64)
    probabilities, labels = softmax(logits), splits.y_test.astype(int)
    assert tta["accuracy_without"] == pytest.approx(float((logits.argmax(axis=1) == labels).mean()))
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1)
    assert tta["loss_without"] == pytest.approx(float(-np.log(picked).mean()), abs=1e-4)
    assert "label_smoothing: 0.1" in (run / "config.yaml").read_text()


def test_evaluate_prints_and_writes_the_accuracy_with_and_without_the_views(logits_run, runner, tmp_path):
    run, _, _ = logits_run
    written = json.loads((run / "eval.json").read_text())["tta"]
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "again.json")])
    assert result.exit_code == 0, result.output
    assert f"test-time augmentation (the figures above and below): flip, translate 2 px: accuracy " \
           f"{written['accuracy_with']:.4f} ({written['accuracy_without']:.4f} without)" in result.output
    again = json.loads((tmp_path / "again.json").read_text())["tta"]
    assert again["views"] == written["views"] and again["accuracy_with"] == written["accuracy_with"]
    assert again["loss_without"] == pytest.approx(written["loss_without"], abs=1e-6)


def test_predict_gives_the_softmax_of_a_logits_model(logits_run, runner, tmp_path):
    from PIL import Image

    from cnnctl.model import load_model
    from cnnctl.predict import prepare

    run, config, _ = logits_run
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = runner.invoke(app, ["predict", str(run), str(folder), "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    logits = np.asarray(load_model(run / "checkpoints" / "best.keras").predict(
        prepare(sorted(folder.iterdir()), (12, 12, 3)), verbose=0), dtype=np.float64)
    for row, expected in zip(found, softmax(logits), strict=True):
        by_index = {top["index"]: top["probability"] for top in row["top"]}
        assert sum(by_index.values()) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose([by_index[i] for i in range(3)], expected, atol=1e-5)
    bare = tmp_path / "bare.keras"
    bare.write_bytes((run / "checkpoints" / "best.keras").read_bytes())
    refused = runner.invoke(app, ["predict", str(bare), str(folder)])
    assert refused.exit_code == 2 and "the model's outputs are not probabilities" in stderr_of(refused)
    given = runner.invoke(app, ["predict", str(bare), str(folder), "--top-k", "3", "--json", "--config", str(config)])
    assert given.exit_code == 0 and json.loads(given.stdout) == found


@pytest.mark.slow
def test_real_mnist_slice_learns_well_above_chance(tmp_path, runner):
    source = SHARED_DATASETS / "mnist.npz"
    if not source.is_file():
        pytest.skip("../shared/datasets/mnist.npz is not here")
    with np.load(source) as data:
        np.savez(tmp_path / "slice.npz", x_train=data["x_train"][:4000], y_train=data["y_train"][:4000],
                 x_test=data["x_test"][:1000], y_test=data["y_test"][:1000])
    result = runner.invoke(app, [
        "train", str(REPO / "configs" / "mnist.yaml"), "--runs-dir", str(tmp_path / "runs"), "--quiet",
        "--set", "data.dataset=npz", "--set", f"data.root={tmp_path / 'slice.npz'}",
        "--set", "train.epochs=2", "--set", "train.optimizer.learning_rate=0.05",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "mnist" / "eval.json").read_text())
    assert report["examples"] == 1000
    assert report["accuracy"] > 0.8, report["accuracy"]  # chance is 0.1


def test_missing_data_offline_fails_fast_listing_the_files(tmp_path):
    env = {"HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / "keras"), "CNNCTL_DATA": str(tmp_path / "none"),
           "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cnnctl", "train", str(REPO / "configs" / "cifar10.yaml"),
                           "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 10, elapsed
    assert "cifar-10-batches-py" in proc.stderr and "cifar-10-python.tar.gz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "cifar10").exists()  # no run directory for a run that never started


# ---------------------------------------------------------------- train.class_weight

CLASSES = ["cat", "dog", "bird"]


def imbalanced_npz(path, counts=(40, 15, 5), test_per_class=4):
    """A tiny npz dataset (12x12x1 uint8) with `counts` training images of cat, dog and bird."""
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(3), counts).astype(np.uint8)
    y_test = np.repeat(np.arange(3), test_per_class).astype(np.uint8)
    np.savez(path, x_train=rng.integers(0, 256, (len(y_train), 12, 12, 1), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 256, (len(y_test), 12, 12, 1), dtype=np.uint8), y_test=y_test)
    return path


def weighted_config(tmp_path, class_weight, name="imb", counts=(40, 15, 5), **train):
    npz = imbalanced_npz(tmp_path / f"{name}.npz", counts)
    return write_config(tmp_path / f"{name}.yaml", tiny_config(
        name=name, seed=3, data={"dataset": "npz", "root": str(npz), "class_names": CLASSES},
        train={"class_weight": class_weight, "epochs": 1, **train}, runtime={"precision": "float32"}))


def test_class_weight_auto_is_logged_and_recorded_in_the_manifest(tmp_path, runner):
    result = runner.invoke(app, ["train", str(weighted_config(tmp_path, "auto")), "--runs-dir", str(tmp_path / "runs"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "class weights (auto): cat 0.5, dog 1.33, bird 4" in result.output
    manifest = json.loads((tmp_path / "runs" / "imb" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["class_weight_mode"] == "auto"
    # scikit-learn's "balanced": 60 images / (3 classes * count)
    assert manifest["class_weight"] == pytest.approx({"cat": 60 / 120, "dog": 60 / 45, "bird": 60 / 15})


def test_weights_of_two_double_the_training_loss_and_leave_evaluation_alone(tmp_path, runner):
    """With a learning rate of ~0 the two runs see the same model on the same batches: the training loss
    of the weighted one is exactly twice the other's; validation and the test report are not weighted."""
    runs = {}
    for name, weights in (("plain", None), ("double", dict.fromkeys(CLASSES, 2.0))):
        config = weighted_config(tmp_path, weights, name=name, validation="test",
                                 optimizer={"name": "sgd", "learning_rate": 1e-9})
        result = runner.invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
        assert result.exit_code == 0, result.output
        with open(tmp_path / "runs" / name / "metrics.csv", newline="") as handle:
            (row,) = csv.DictReader(handle)
        runs[name] = (row, json.loads((tmp_path / "runs" / name / "eval.json").read_text()))
    (plain, plain_eval), (double, double_eval) = runs["plain"], runs["double"]
    assert float(double["loss"]) == pytest.approx(2 * float(plain["loss"]), rel=1e-5)
    assert float(double["val_loss"]) == pytest.approx(float(plain["val_loss"]), rel=1e-5)
    assert double_eval["loss"] == pytest.approx(plain_eval["loss"], rel=1e-5)


@pytest.mark.parametrize(("class_weight", "counts", "message"), [
    ({"dgo": 2.0}, (40, 15, 5), "train.class_weight: no class named 'dgo' (classes: cat, dog, bird; "
                                "did you mean 'dog'?)"),
    ("auto", (40, 0, 5), "train.class_weight: auto weighs each class by its count among the 45 training images, "
                         "and class 'dog' has none"),
])
def test_class_weight_problems_exit_2_with_one_line_before_any_run_directory(tmp_path, runner, class_weight, counts,
                                                                             message):
    config = weighted_config(tmp_path, class_weight, counts=counts)
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert [line for line in stderr_of(result).splitlines() if line.startswith("error: ")] == [f"error: {message}"]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "imb").exists()
