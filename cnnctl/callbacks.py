"""Keras callbacks a run uses: the config's own (EarlyStopping, ReduceLROnPlateau, TerminateOnNaN)
plus the few Keras does not have: per-epoch learning rate and seconds, atomic best/last checkpoints,
and a record of where a loss became NaN.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from cnnctl import averaging, files, history, resume, rundir
from cnnctl.errors import TrainingFailed
from cnnctl.files import atomic_path
from cnnctl.schema import CallbacksConfig, TrainConfig


class Stop:
    """Why training is stopping early, shared by the callbacks of one run.

    When a run stops inside an epoch (a signal, a NaN loss) Keras still calls on_epoch_end with the
    partial epoch's logs; the callbacks that write files check `partial` and write nothing then.
    """

    def __init__(self):
        self.reason: str | None = None  # "interrupt" or "nan"
        self.signal: int | None = None
        self.where: tuple[int, int] | None = None  # (epoch, step), 1-based
        self.partial = False  # stopped inside an epoch: its logs are not an epoch's

    def request(self, reason: str, signal: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signal = reason, signal


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer uses now (schedules evaluated at the current step)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if isinstance(inner, keras.optimizers.MultiOptimizer):  # parameter groups: the main optimizer's rate
        inner = inner._optimizer_map.default_optimizer
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


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

    def __init__(self, path: Path, append: bool = False, stop: Stop | None = None):
        super().__init__()
        self.path, self.append, self.stop = Path(path), append, stop or Stop()
        self.columns: list[str] | None = None

    def on_train_begin(self, logs=None):
        if self.append:
            self.columns = history.csv_columns(self.path)

    def on_epoch_end(self, epoch, logs=None):
        if self.stop.partial:
            return
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

    def __init__(self, directory: Path, monitor: str, write: bool = True,
                 best_value: float | None = None, best_epoch: int | None = None, stop: Stop | None = None):
        super().__init__()
        self.directory, self.stop = Path(directory), stop or Stop()
        self.monitor, self.write = monitor, write
        self.best_value, self.best_epoch = best_value, best_epoch

    def _save(self, name: str) -> None:
        target = self.directory / name
        try:
            with atomic_path(target, suffix=".keras") as tmp, averaging.averaged(self.model):
                self.model.save(tmp)
        except OSError as exc:  # a full disk fails the run with a message, not an OSError from inside fit
            reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            kept = f"the previous {name} is kept" if target.exists() else f"no {name} was written"
            space = files.free_space(self.directory) if exc.errno == errno.ENOSPC else ""
            raise TrainingFailed(f"cannot write checkpoints/{name} ({reason}); {kept}{space.replace(',', ';', 1)}") \
                from exc

    def on_epoch_end(self, epoch, logs=None):
        if self.stop.partial:
            return
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is None or history.is_better(self.monitor, float(value), self.best_value)
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
    """Stops training at the first NaN or infinite loss and records the epoch and step."""

    def __init__(self, stop: Stop, step_offset: int = 0):
        super().__init__()
        self.stop, self.step_offset = stop, step_offset
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.stop.request("nan")
            self.stop.where = (self._epoch + 1, batch + 1 + self.step_offset)
            self.stop.partial = True
            self.model.stop_training = True


def nan_where(epoch: int, step: int, steps_per_execution: int) -> str:
    """Where a NaN loss was seen: Keras reports the loss once per `steps_per_execution` steps."""
    if steps_per_execution <= 1:
        return f"epoch {epoch}, step {step}"
    return f"epoch {epoch}, one of steps {max(1, step - steps_per_execution + 1)}-{step}"


class TensorBoard(keras.callbacks.TensorBoard):
    """keras.callbacks.TensorBoard that does not log the partial epoch of a stopped run."""

    def __init__(self, *args, stop: Stop, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop = stop

    def on_epoch_end(self, epoch, logs=None):
        if not self.stop.partial:
            super().on_epoch_end(epoch, logs)


def from_config(config: CallbacksConfig) -> list[keras.callbacks.Callback]:
    """EarlyStopping / ReduceLROnPlateau as the config gives them; mode "auto" is `history.mode`'s."""
    callbacks: list[keras.callbacks.Callback] = []
    for section, kind in ((config.early_stopping, keras.callbacks.EarlyStopping),
                          (config.reduce_lr_on_plateau, keras.callbacks.ReduceLROnPlateau)):
        if section is not None:
            arguments = section.model_dump()
            if arguments["mode"] == "auto":
                arguments["mode"] = history.mode(arguments["monitor"])
            callbacks.append(kind(**arguments))
    return callbacks


class ResumeCheckpoint(keras.callbacks.Callback):
    """Resume checkpoints at each epoch's end, every `every_steps` steps, and when a stop is asked for.

    Callback counters (EarlyStopping, ReduceLROnPlateau) are snapshotted at epoch ends only, so a
    checkpoint taken inside an epoch carries the counters of the last complete epoch: exactly the
    state the resumed epoch starts from. On train begin (after Keras reset them) they are restored.
    """

    def __init__(self, run_dir: Path, stop: Stop, checkpoint: AtomicCheckpoint, others: list, *,
                 every_steps: int | None = None, steps_per_epoch: int, initial=None, write: bool = True):
        super().__init__()
        self.run_dir, self.stop, self.checkpoint, self.others = Path(run_dir), stop, checkpoint, others
        self.every_steps, self.steps_per_epoch, self.write = every_steps, steps_per_epoch, write
        self.callback_state = initial.callbacks if initial else {}
        self.last_logs = initial.last_logs if initial else {}
        self.step_offset = initial.step if initial else 0  # steps of this epoch done before this fit
        self._epoch = 0

    def on_train_begin(self, logs=None):
        resume.restore_callbacks(self.others, self.callback_state)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1 + self.step_offset
        if self.stop.reason == "interrupt" and self.stop.where is None:
            self.stop.where = (self._epoch + 1, step)
            self.model.stop_training = True
            if step < self.steps_per_epoch:
                self.stop.partial = True
                self._save(self._epoch, step)
            # at an epoch's last step the epoch ends normally and its checkpoint is the resume point
        elif self.every_steps and step % self.every_steps == 0 and step < self.steps_per_epoch:
            self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        if self.stop.partial:
            return
        self.callback_state = resume.callback_state(self.others)
        self.last_logs = {k: float(v) for k, v in (logs or {}).items()}
        self._save(epoch + 1, 0)

    def _save(self, epoch: int, step: int) -> None:
        if self.write:
            resume.save(self.model, self.run_dir, resume.ResumeState(
                epoch=epoch, step=step, best_value=self.checkpoint.best_value, best_epoch=self.checkpoint.best_epoch,
                callbacks=self.callback_state, last_logs=self.last_logs))


def for_run(run_dir: Path, train: TrainConfig, stop: Stop, state: resume.ResumeState | None, steps_per_epoch: int, *,
            write: bool, extra: Sequence = (), tracker=None) -> tuple[list, AtomicCheckpoint, NaNGuard]:
    """The callbacks of a run, in the order they must run, and the two `train` reads back afterwards.

    `state` (a resumed run) restores the best checkpoint's value, the callbacks' counters and the
    step within the epoch; `write` is False on workers that are not the chief.
    """
    checkpoint = AtomicCheckpoint(run_dir / rundir.CHECKPOINTS, monitor=train.monitor, write=write, stop=stop,
                                  best_value=state.best_value if state else None,
                                  best_epoch=state.best_epoch if state else None)
    configured = from_config(train.callbacks)
    nan_guard = NaNGuard(stop, step_offset=state.step if state else 0)
    callbacks = [
        averaging.AveragedValidation(),
        EpochExtras(),
        *([nan_guard] if train.callbacks.terminate_on_nan else []),
        *configured,
        checkpoint,
        ResumeCheckpoint(run_dir, stop, checkpoint, configured, every_steps=train.checkpoint_every_steps,
                         steps_per_epoch=steps_per_epoch, initial=state, write=write),
        MetricsCSV(run_dir / rundir.METRICS, append=state is not None, stop=stop),
        TensorBoard(log_dir=str(run_dir / rundir.TENSORBOARD), write_graph=False, profile_batch=0, stop=stop),
        *([TrackEpochs(tracker, stop)] if tracker is not None else []),
        *extra,
    ]
    return callbacks, checkpoint, nan_guard


class TrackEpochs(keras.callbacks.Callback):
    """Sends each epoch's metrics.csv row to the run's MLflow run (tracking.Tracker), step = epoch."""

    def __init__(self, tracker, stop: Stop):
        super().__init__()
        self.tracker, self.stop = tracker, stop

    def on_epoch_end(self, epoch, logs=None):
        if not self.stop.partial:  # exactly the values metrics.csv holds (its 6 significant digits)
            self.tracker.log_epoch(epoch + 1, {k: float(_cell(v)) for k, v in (logs or {}).items() if v is not None})


class Reporter(keras.callbacks.Callback):
    """Reports `metric` to an Optuna trial after each epoch and stops training when the trial's
    pruner says so (`pruned` is then the epoch); the run itself ends normally, with its files."""

    def __init__(self, trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric
        self.pruned: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), epoch + 1)
        if self.trial.should_prune():
            self.pruned = epoch + 1
            self.model.stop_training = True
