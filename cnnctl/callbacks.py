"""Keras callbacks a run uses: the config's own (EarlyStopping, ReduceLROnPlateau, TerminateOnNaN)
plus the few Keras does not have: per-epoch learning rate and seconds, atomic best/last checkpoints,
and a record of where a loss became NaN.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from cnnctl.schema import CallbacksConfig


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer uses now (schedules evaluated at the current step)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def _is_better(monitor: str, mode: str, value: float, best: float | None) -> bool:
    if best is None:
        return not math.isnan(value)
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return value > best if mode == "max" else value < best


class EpochExtras(keras.callbacks.Callback):
    """Adds `learning_rate` and `epoch_seconds` to each epoch's logs (so metrics.csv has them)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)


class MetricsCSV(keras.callbacks.Callback):
    """metrics.csv: one row per epoch (1-based), columns fixed by the first epoch, flushed each epoch.

    Unlike keras.callbacks.CSVLogger it invents no `val_*` columns when there is no validation,
    and with `append=True` it continues an existing file under its own header (resume).
    """

    def __init__(self, path: Path, append: bool = False):
        super().__init__()
        self.path, self.append = Path(path), append
        self.columns: list[str] | None = None

    def on_train_begin(self, logs=None):
        if self.append and self.path.exists():
            with open(self.path, newline="") as handle:
                header = next(csv.reader(handle), None)
            self.columns = header[1:] if header else None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        new = self.columns is None
        if new:
            order = sorted(logs, key=lambda k: (k in ("learning_rate", "epoch_seconds"), k.startswith("val_")))
            self.columns = order
        with open(self.path, "a" if not new or self.append else "w", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *self.columns])
            writer.writerow([epoch + 1, *(_cell(logs.get(k)) for k in self.columns)])
            handle.flush()
            os.fsync(handle.fileno())


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{float(value):.6g}" if not isinstance(value, str) else value


class AtomicCheckpoint(keras.callbacks.Callback):
    """checkpoints/last.keras every epoch, checkpoints/best.keras when `monitor` improves.

    Each file is written to a temporary name and renamed, so a crash or a full disk leaves the
    previous checkpoint intact. Without validation (`monitor` absent from the logs) the last epoch
    is the best. Only `write=True` processes (the chief) keep files.
    """

    def __init__(self, directory: Path, monitor: str, mode: str = "auto", write: bool = True,
                 best_value: float | None = None, best_epoch: int | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.monitor, self.mode, self.write = monitor, mode, write
        self.best_value, self.best_epoch = best_value, best_epoch

    def _save(self, name: str) -> None:
        target = self.directory / name
        tmp = self.directory / f".{name}.tmp.keras"
        try:
            self.model.save(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is None or _is_better(self.monitor, self.mode, float(value), self.best_value)
        if value is not None and improved:
            self.best_value = float(value)
        if improved:
            self.best_epoch = epoch + 1
        if not self.write:
            return
        self._save("last.keras")
        if improved:
            self._save("best.keras")


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the epoch and step."""

    def __init__(self):
        super().__init__()
        self.where: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.where = (self._epoch + 1, batch + 1)
            self.model.stop_training = True


def from_config(config: CallbacksConfig) -> list[keras.callbacks.Callback]:
    """EarlyStopping / ReduceLROnPlateau exactly as the config gives them."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping is not None:
        callbacks.append(keras.callbacks.EarlyStopping(**config.early_stopping.model_dump()))
    if config.reduce_lr_on_plateau is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(**config.reduce_lr_on_plateau.model_dump()))
    return callbacks
