"""plots/ of a run: written after a smoke run, refreshed by `cnnctl evaluate`, never failing a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config, write_config
from typer.testing import CliRunner

from cnnctl import evaluation, history, plots, rundata
from cnnctl.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("learning_curves.png", "confusion_matrix.png", "misclassified.png")

TINY = tiny_config(seed=3, classes=4, data={"synthetic": {"train_examples": 96, "test_examples": 48}},
                   train={"epochs": 1, "validation": "test"})


def train_tiny(root, name="tiny", **run_kwargs):
    import keras

    from cnnctl.config import load_config
    from cnnctl.train import run

    path = write_config(root / f"{name}.yaml", TINY)
    try:
        return run(load_config(path), runs_dir=root / "runs", run_name=name, smoke=True, **run_kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # leave the process as other tests expect it


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    result = train_tiny(tmp_path_factory.mktemp("plots"))
    assert result.status == "completed", result.message
    return result.run_dir


def assert_png(path, min_bytes=5_000):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200, image.size
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0.01  # something is drawn, not a blank canvas


def test_a_smoke_run_writes_the_three_plots(smoke_run):
    assert sorted(p.name for p in (smoke_run / "plots").iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        assert_png(smoke_run / "plots" / name)
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert "warnings" not in manifest


def test_the_report_lists_misclassified_images_and_keeps_its_keys(smoke_run):
    report = json.loads((smoke_run / "eval.json").read_text())
    assert {"examples", "loss", "accuracy", "top_k", "macro_f1", "per_class", "class_names",
            "confusion_matrix"} <= set(report)
    wrong = report["examples"] - sum(report["confusion_matrix"][i][i] for i in range(len(report["class_names"])))
    assert len(report["misclassified"]) == min(wrong, evaluation.MISCLASSIFIED)
    for mistake in report["misclassified"]:
        assert 0 <= mistake["index"] < report["examples"] and mistake["true"] != mistake["predicted"]
    probabilities = [m["probability"] for m in report["misclassified"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_evaluate_refreshes_the_plots(smoke_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    shutil.rmtree(run / "plots")
    result = CliRunner().invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert f"plots written to {run / 'plots'}" in result.output
    for name in PLOTS:
        assert_png(run / "plots" / name)
    # The images reloaded for the refresh are the ones the report's indices point into.
    report = json.loads((run / "eval.json").read_text())
    _, splits = rundata.test_split(run)
    assert len(splits.x_test) == report["examples"]


def test_a_plot_that_fails_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(plots, "confusion_matrix", broken)
    logged = []
    result = train_tiny(tmp_path, log=logged.append)
    assert result.status == "completed"
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["warnings"] == ["plots not written: RuntimeError: no ink"]
    assert "warning: plots not written: RuntimeError: no ink" in logged
    assert (result.run_dir / "eval.json").is_file()


def test_learning_curves_fall_back_to_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,accuracy,loss,val_accuracy,val_loss,learning_rate,epoch_seconds\n"
                                          "1,0.5,1.2,0.55,1.1,0.01,0.5\n2,0.7,0.8,,0.9,0.01,0.4\n")
    hist = history.load(tmp_path)
    assert hist["val_accuracy"] == [0.55, None] and hist["epoch"] == [1.0, 2.0]
    assert history.metric_names(hist) == ["loss", "accuracy"]
    assert_png(plots.learning_curves(hist, tmp_path / "curves.png"))


def test_a_confusion_matrix_of_many_classes(tmp_path):  # CIFAR-100: no per-cell numbers, no tick labels
    rng = np.random.default_rng(0)
    n = 100
    report = {"confusion_matrix": rng.integers(0, 20, (n, n)).tolist(), "class_names": [f"class{i}" for i in range(n)],
              "accuracy": 0.1}
    assert_png(plots.confusion_matrix(report, tmp_path / "cm.png"))


def test_misclassified_handles_rgb_and_no_mistakes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    mistakes = [{"index": i, "true": 0, "predicted": 1, "probability": 0.9} for i in range(6)]
    assert_png(plots.misclassified(images, mistakes, ["cat", "dog"], tmp_path / "rgb.png"))
    assert_png(plots.misclassified(images, [], ["cat", "dog"], tmp_path / "none.png"), min_bytes=2_000)


def test_importing_the_cli_imports_neither_tensorflow_nor_matplotlib():
    code = "import cnnctl.cli, sys; assert 'tensorflow' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
