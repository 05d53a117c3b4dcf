"""How training progress is shown: a live rich bar, plain log lines, or JSON lines.

These are Keras callbacks the CLI hands to train.run(); they write to the console they are given.
"""

from __future__ import annotations

import json
import time

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_SKIP = {"epoch_seconds"}


def format_metrics(logs: dict) -> str:
    parts = []
    for key, value in logs.items():
        if key in _SKIP:
            continue
        if key == "learning_rate":
            parts.append(f"lr {value:.3g}")
        else:
            parts.append(f"{key} {float(value):.4f}")
    return "  ".join(parts)


class _EpochLines(keras.callbacks.Callback):
    def __init__(self, console: Console, stop=None):
        super().__init__()
        self.console = console
        self.stop = stop  # callbacks.Stop: a partial epoch (interrupt, NaN) gets no epoch line

    def partial(self) -> bool:
        return bool(self.stop is not None and self.stop.partial)

    def epoch_line(self, epoch: int, logs: dict) -> str:
        seconds = logs.get("epoch_seconds")
        took = f"  {seconds:.1f}s" if seconds is not None else ""
        return f"epoch {epoch + 1}/{self.params['epochs']}  {format_metrics(logs)}{took}"


class PlainProgress(_EpochLines):
    """--quiet: one plain line per finished epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if not self.partial():
            self.console.print(self.epoch_line(epoch, logs or {}), highlight=False, markup=False)


class JsonProgress(keras.callbacks.Callback):
    """--json: one JSON object per finished epoch."""

    def __init__(self, console: Console, stop=None):
        super().__init__()
        self.console, self.stop = console, stop

    def on_epoch_end(self, epoch, logs=None):
        if self.stop is not None and self.stop.partial:
            return
        record = {"event": "epoch", "epoch": epoch + 1, "epochs": self.params["epochs"]}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        self.console.print(json.dumps(record), highlight=False, markup=False, soft_wrap=True)


class RichProgress(_EpochLines):
    """A live bar per epoch (step, ETA, running metrics), then one line per finished epoch."""

    def __init__(self, console: Console, stop=None, refresh_seconds: float = 0.25):
        super().__init__(console, stop)
        self.refresh_seconds = refresh_seconds
        self.progress: Progress | None = None

    def on_train_begin(self, logs=None):
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
            console=self.console, transient=True,
        )
        self.progress.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._last = 0.0
        self.task = self.progress.add_task("train", total=self.params.get("steps"),
                                           epoch=f"{epoch + 1}/{self.params['epochs']}", metrics="")

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        self.progress.update(self.task, completed=batch + 1)
        if now - self._last >= self.refresh_seconds:
            self._last = now
            self.progress.update(self.task, metrics=format_metrics(logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        self.progress.remove_task(self.task)
        if not self.partial():
            self.progress.console.print(self.epoch_line(epoch, logs or {}), highlight=False, markup=False)

    def on_train_end(self, logs=None):
        if self.progress is not None:
            self.progress.stop()
