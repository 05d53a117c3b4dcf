"""Per-epoch values of a run and the one rule for which way a metric improves."""

from __future__ import annotations

import json
import math

import pytest

from cnnctl import history


@pytest.mark.parametrize("metric", ["accuracy", "val_accuracy", "top_k_accuracy", "val_top_k_accuracy", "f1",
                                    "macro_f1", "fmeasure", "val_fmeasure_acc"])
def test_metrics_that_go_up(metric):
    assert history.higher_is_better(metric) and history.mode(metric) == "max"


@pytest.mark.parametrize("metric", ["loss", "val_loss", "mse", "val_mean_absolute_error"])
def test_metrics_that_go_down(metric):
    assert not history.higher_is_better(metric) and history.mode(metric) == "min"


def test_is_better_follows_the_direction_and_ignores_nan_at_first():
    assert history.is_better("val_accuracy", 0.5, None) and not history.is_better("val_loss", math.nan, None)
    assert history.is_better("val_accuracy", 0.6, 0.5) and not history.is_better("val_accuracy", 0.5, 0.5)
    assert history.is_better("val_loss", 0.4, 0.5) and not history.is_better("val_loss", 0.6, 0.5)


def test_best_skips_missing_and_non_finite_values():
    assert history.best([0.2, None, math.nan, 0.7, 0.5], "val_accuracy") == 0.7
    assert history.best([0.9, math.inf, 0.3, None], "loss") == 0.3
    assert history.best([None, math.nan], "loss") is None


def test_metrics_csv_as_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy,learning_rate,epoch_seconds\n"
                    "1,0.5,1.2,0.55,0.01,0.5\n2,0.7,0.8,,0.01,0.4\n")
    columns = history.read_metrics_csv(path)
    assert columns["epoch"] == [1, 2] and all(isinstance(e, int) for e in columns["epoch"])
    assert columns["val_accuracy"] == [0.55, None] and columns["loss"] == [1.2, 0.8]
    assert history.csv_columns(path) == ["accuracy", "loss", "val_accuracy", "learning_rate", "epoch_seconds"]
    assert history.read_metrics_csv(tmp_path / "missing.csv") == {} and history.csv_columns(tmp_path / "no") is None


def test_a_run_prefers_history_json_and_falls_back_to_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    assert history.load(tmp_path) == {"epoch": [1], "loss": [0.5]}
    (tmp_path / "history.json").write_text(json.dumps({"epoch": [1, 2], "loss": [0.5, "x"], "note": "skip"}))
    assert history.load(tmp_path) == {"epoch": [1.0, 2.0], "loss": [0.5, None]}
    (tmp_path / "history.json").write_text("{ broken")
    assert history.load(tmp_path) == {"epoch": [1], "loss": [0.5]}


def test_metric_names_put_loss_first_and_keep_validation_only_metrics():
    hist = {"epoch": [1], "accuracy": [1], "loss": [1], "val_loss": [1], "val_top_k_accuracy": [1],
            "learning_rate": [1], "epoch_seconds": [1]}
    assert history.metric_names(hist) == ["loss", "accuracy", "top_k_accuracy"]


def test_steady_speed_leaves_out_the_first_epoch():
    assert history.steady_images_per_second({"epoch_seconds": [9.0, 2.0, 2.0, 4.0]}, 1000) == 500.0
    assert history.steady_images_per_second({"epoch_seconds": [4.0]}, 1000) == 250.0
    assert history.steady_images_per_second({}, 1000) is None
