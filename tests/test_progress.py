"""cnnctl.progress: the epoch lines of --quiet, --json and the live bar, rendered into a string."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from cnnctl import progress
from cnnctl.callbacks import Stop

LOGS = {"loss": 0.123456, "accuracy": 0.875, "val_loss": 0.25, "learning_rate": 0.00125, "epoch_seconds": 2.34}


def console() -> Console:
    return Console(file=io.StringIO(), color_system=None)


def shown(callback) -> str:
    return callback.console.file.getvalue()


def started(kind, stop=None, epochs=3):
    callback = kind(console(), stop)
    callback.set_params({"epochs": epochs, "steps": 4})
    return callback


def test_format_metrics_gives_four_decimals_and_a_short_learning_rate():
    assert progress.format_metrics(LOGS) == "loss 0.1235  accuracy 0.8750  val_loss 0.2500  lr 0.00125"
    assert progress.format_metrics({"epoch_seconds": 1.0}) == ""


def test_plain_progress_prints_one_line_per_epoch():
    plain = started(progress.PlainProgress)
    plain.on_epoch_end(0, dict(LOGS))
    plain.on_epoch_end(1, {"loss": 0.5})  # no epoch_seconds: no time
    assert shown(plain) == ("epoch 1/3  loss 0.1235  accuracy 0.8750  val_loss 0.2500  lr 0.00125  2.3s\n"
                            "epoch 2/3  loss 0.5000\n")


def test_plain_progress_prints_metric_names_as_they_are():
    plain = started(progress.PlainProgress)
    plain.on_epoch_end(0, {"[bold]loss": 1.0})
    assert shown(plain) == "epoch 1/3  [bold]loss 1.0000\n"  # no rich markup, no highlighting


def test_json_progress_prints_one_object_per_epoch():
    as_json = started(progress.JsonProgress)
    as_json.on_epoch_end(0, dict(LOGS))
    as_json.on_epoch_end(1, {"loss": 0.5})
    first, second = shown(as_json).splitlines()
    assert json.loads(first) == {"event": "epoch", "epoch": 1, "epochs": 3, **LOGS}
    assert json.loads(second) == {"event": "epoch", "epoch": 2, "epochs": 3, "loss": 0.5}


def test_json_lines_are_not_wrapped_at_the_console_width():
    as_json = started(progress.JsonProgress)
    as_json.on_epoch_end(0, {f"metric_number_{i}": float(i) for i in range(10)})
    (line,) = shown(as_json).splitlines()
    assert len(line) > as_json.console.width and len(json.loads(line)) == 13


@pytest.mark.parametrize("kind", [progress.PlainProgress, progress.JsonProgress])
def test_a_partial_epoch_prints_nothing(kind):
    stop = Stop()
    callback = started(kind, stop)
    callback.on_epoch_end(0, {"loss": 0.5})
    stop.partial = True
    callback.on_epoch_end(1, {"loss": 0.4})
    assert len(shown(callback).splitlines()) == 1


def test_rich_progress_keeps_the_finished_epochs_lines():
    stop = Stop()
    live = progress.RichProgress(console(), stop, refresh_seconds=0)
    live.set_params({"epochs": 2, "steps": 4})
    live.on_train_begin()
    live.on_epoch_begin(0)
    for batch in range(3):
        live.on_train_batch_end(batch, {"loss": 0.5 + batch})
    (task,) = live.progress.tasks
    assert (task.completed, task.total, task.fields) == (3, 4, {"epoch": "1/2", "metrics": "loss 2.5000"})
    live.on_epoch_end(0, {"loss": 0.25, "epoch_seconds": 1.0})
    assert live.progress.tasks == []
    live.on_epoch_begin(1)
    stop.partial = True
    live.on_epoch_end(1, {"loss": 0.2})
    live.on_train_end()
    assert [line for line in shown(live).splitlines() if line] == ["epoch 1/2  loss 0.2500  1.0s"]
