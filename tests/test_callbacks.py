"""cnnctl.callbacks driven directly: a tiny compiled model and hand-written epoch logs, no training."""

from __future__ import annotations

import csv
import math

import keras
import numpy as np
import pytest
from conftest import disk_full_on_save, leftovers, weights_of

from cnnctl import callbacks, rundir
from cnnctl.averaging import AveragedValidation
from cnnctl.callbacks import AtomicCheckpoint, MetricsCSV, NaNGuard, Stop, nan_where
from cnnctl.errors import TrainingFailed
from cnnctl.resume import ResumeState
from cnnctl.schema import CallbacksConfig, TrainConfig


def attached(callback, model):
    callback.set_model(model)
    return callback


def rows(path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def loaded_weights(path) -> list[np.ndarray]:
    return weights_of(keras.saving.load_model(path))


def assert_same_weights(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def shifted(model, by: float) -> list[np.ndarray]:
    """Move every weight by `by` (a new "epoch" of training) and return the new weights."""
    model.set_weights([w + by for w in model.get_weights()])
    return weights_of(model)


# ---------------------------------------------------------------- Stop and EpochExtras


def test_stop_keeps_the_first_reason():
    stop = Stop()
    assert (stop.reason, stop.signal, stop.where, stop.partial) == (None, None, None, False)
    stop.request("interrupt", signal=15)
    stop.request("nan")
    assert (stop.reason, stop.signal) == ("interrupt", 15)


def test_epoch_extras_add_the_learning_rate_and_the_seconds(compiled_model):
    extras = attached(callbacks.EpochExtras(), compiled_model)
    extras.on_epoch_begin(0)
    logs = {"loss": 1.0}
    extras.on_epoch_end(0, logs)
    assert logs["learning_rate"] == pytest.approx(0.01)  # keras' SGD default
    assert set(logs) == {"loss", "learning_rate", "epoch_seconds"} and 0 <= logs["epoch_seconds"] < 60


# ---------------------------------------------------------------- the config's own callbacks


@pytest.mark.parametrize(("monitor", "mode"), [("val_accuracy", "max"), ("val_f1", "max"), ("accuracy", "max"),
                                               ("val_loss", "min"), ("loss", "min")])
def test_auto_mode_is_the_metric_direction(monitor, mode):
    early, plateau = callbacks.from_config(CallbacksConfig(early_stopping={"monitor": monitor},
                                                           reduce_lr_on_plateau={"monitor": monitor}))
    assert isinstance(early, keras.callbacks.EarlyStopping) and early.mode == mode
    assert isinstance(plateau, keras.callbacks.ReduceLROnPlateau) and plateau.mode == mode


def test_a_given_mode_and_the_other_arguments_reach_keras():
    (early,) = callbacks.from_config(CallbacksConfig(early_stopping={
        "monitor": "val_accuracy", "mode": "min", "patience": 3, "min_delta": 0.01, "restore_best_weights": True}))
    assert (early.monitor, early.mode, early.patience, early.restore_best_weights) == ("val_accuracy", "min", 3, True)
    assert early.min_delta == pytest.approx(0.01)
    assert callbacks.from_config(CallbacksConfig()) == []


# ---------------------------------------------------------------- AtomicCheckpoint


def test_best_follows_the_monitor_and_last_every_epoch(tmp_path, compiled_model):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy"), compiled_model)
    epochs = []
    for epoch, value in enumerate([0.5, 0.7, 0.6]):
        epochs.append(shifted(compiled_model, 1.0))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": value})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.7, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "last.keras"]
    assert_same_weights(loaded_weights(tmp_path / "best.keras"), epochs[1])
    assert_same_weights(loaded_weights(tmp_path / "last.keras"), epochs[2])


def test_a_lower_loss_is_better_and_a_nan_never_is(tmp_path, compiled_model):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_loss"), compiled_model)
    checkpoint.on_epoch_end(0, {"val_loss": math.nan})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]
    for epoch, value in enumerate([0.9, 0.4, 0.5, math.nan], start=1):
        checkpoint.on_epoch_end(epoch, {"val_loss": value})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.4, 3)


def test_without_the_monitor_in_the_logs_the_last_epoch_is_the_best(tmp_path, compiled_model):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy", best_value=0.9, best_epoch=1),
                          compiled_model)
    checkpoint.on_epoch_end(1, {"loss": 0.5})
    checkpoint.on_epoch_end(2, {"loss": 0.7})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.9, 3)
    assert_same_weights(loaded_weights(tmp_path / "best.keras"), weights_of(compiled_model))


def test_a_resumed_checkpoint_must_beat_the_best_it_was_given(tmp_path, compiled_model):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy", best_value=0.8, best_epoch=2),
                          compiled_model)
    checkpoint.on_epoch_end(2, {"val_accuracy": 0.75})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.8, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def test_a_worker_keeps_count_but_writes_nothing(tmp_path, compiled_model):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy", write=False), compiled_model)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.5, 1) and list(tmp_path.iterdir()) == []


def test_a_partial_epoch_is_not_checkpointed(tmp_path, compiled_model):
    stop = Stop()
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy", stop=stop), compiled_model)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    kept = weights_of(compiled_model)
    shifted(compiled_model, 1.0)
    stop.partial = True
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.9})
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.5, 1)
    for name in ("best.keras", "last.keras"):
        assert_same_weights(loaded_weights(tmp_path / name), kept)


def test_checkpoints_replace_the_previous_file_through_a_temporary_one(tmp_path, compiled_model, monkeypatch):
    checkpoint = attached(AtomicCheckpoint(tmp_path, monitor="val_accuracy"), compiled_model)
    written = []
    save = compiled_model.save

    def recording_save(filepath, *args, **kwargs):
        written.append(filepath.name)
        save(filepath, *args, **kwargs)

    monkeypatch.setattr(compiled_model, "save", recording_save)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    last, best = written
    assert last.startswith(".last.keras.") and best.startswith(".best.keras.")
    assert last.endswith(".tmp.keras") and best.endswith(".tmp.keras")
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "last.keras"]


def test_atomic_checkpoint_on_a_full_disk_keeps_last_and_best(tmp_path, compiled_model, keras_module, monkeypatch):
    checkpoint = AtomicCheckpoint(tmp_path, monitor="val_accuracy")
    checkpoint.set_model(compiled_model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    saved = weights_of(compiled_model)
    compiled_model.set_weights([w + 1 for w in saved])

    disk_full_on_save(compiled_model, monkeypatch)
    with pytest.raises(TrainingFailed, match=r"cannot write checkpoints/last.keras \(the disk is full\); "
                                             r"the previous last.keras is kept"):
        checkpoint.on_epoch_end(1, {"loss": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "last.keras"]
    assert leftovers(tmp_path) == []
    for name in ("last.keras", "best.keras"):
        restored = keras_module.saving.load_model(tmp_path / name)
        for got, want in zip(weights_of(restored), saved, strict=True):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- MetricsCSV


def test_metrics_csv_orders_the_columns_and_numbers_the_epochs_from_1(tmp_path):
    path = tmp_path / rundir.METRICS
    metrics = MetricsCSV(path)
    metrics.on_train_begin()
    metrics.on_epoch_end(0, {"val_loss": 0.5, "learning_rate": 0.01, "loss": 0.123456789, "epoch_seconds": 2.5,
                             "accuracy": 0.75})
    metrics.on_epoch_end(1, {"val_loss": 0.25, "loss": 0.1, "accuracy": 0.8})  # no learning_rate this time
    assert rows(path) == [["epoch", "loss", "accuracy", "val_loss", "learning_rate", "epoch_seconds"],
                          ["1", "0.123457", "0.75", "0.5", "0.01", "2.5"],
                          ["2", "0.1", "0.8", "0.25", "", ""]]


def test_metrics_csv_without_validation_has_no_val_columns(tmp_path):
    path = tmp_path / rundir.METRICS
    path.write_text("epoch,old\n1,9\n")  # a new run overwrites, it does not append
    metrics = MetricsCSV(path)
    metrics.on_train_begin()
    metrics.on_epoch_end(0, {"loss": 1.0})
    assert rows(path) == [["epoch", "loss"], ["1", "1"]]


def test_a_resumed_metrics_csv_appends_under_its_own_header(tmp_path):
    path = tmp_path / rundir.METRICS
    path.write_text("epoch,loss,val_loss,learning_rate\n1,0.9,0.8,0.01\n")
    metrics = MetricsCSV(path, append=True)
    metrics.on_train_begin()
    metrics.on_epoch_end(1, {"learning_rate": 0.005, "val_loss": 0.6, "loss": 0.7, "accuracy": 0.5})
    assert rows(path) == [["epoch", "loss", "val_loss", "learning_rate"],
                          ["1", "0.9", "0.8", "0.01"],
                          ["2", "0.7", "0.6", "0.005"]]  # a column it never had (accuracy) is not added


def test_a_partial_epoch_writes_no_row(tmp_path):
    path = tmp_path / rundir.METRICS
    stop = Stop()
    metrics = MetricsCSV(path, stop=stop)
    metrics.on_train_begin()
    metrics.on_epoch_end(0, {"loss": 1.0})
    stop.partial = True
    metrics.on_epoch_end(1, {"loss": 0.5})
    assert rows(path) == [["epoch", "loss"], ["1", "1"]]
    fresh = tmp_path / "fresh.csv"
    MetricsCSV(fresh, stop=stop).on_epoch_end(0, {"loss": 0.5})
    assert not fresh.exists()


# ---------------------------------------------------------------- NaNGuard


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_nan_guard_stops_at_the_first_non_finite_loss(compiled_model, loss):
    stop = Stop()
    guard = attached(NaNGuard(stop), compiled_model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 0.5})
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(3, {"loss": 0.4})
    assert stop.reason is None and not compiled_model.stop_training
    guard.on_train_batch_end(4, {"loss": loss})
    assert (stop.reason, stop.where, stop.partial) == ("nan", (3, 5), True)
    assert compiled_model.stop_training


def test_nan_guard_counts_steps_from_where_a_resumed_epoch_started(compiled_model):
    stop = Stop()
    guard = attached(NaNGuard(stop, step_offset=10), compiled_model)
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(4, {"loss": math.nan})
    assert stop.where == (2, 15)


def test_nan_location_is_a_range_when_steps_run_in_groups():
    assert nan_where(2, 3, 1) == "epoch 2, step 3"
    assert nan_where(2, 16, 8) == "epoch 2, one of steps 9-16"


# ---------------------------------------------------------------- for_run


def train_config(**changes) -> TrainConfig:
    return TrainConfig(optimizer={"name": "sgd"}, validation="test", **changes)


def test_for_run_returns_the_callbacks_in_their_order(tmp_path):
    extra = keras.callbacks.Callback()
    train = train_config(callbacks={"early_stopping": {}, "reduce_lr_on_plateau": {}})
    made, checkpoint, nan_guard = callbacks.for_run(tmp_path, train, Stop(), None, steps_per_epoch=10, write=True,
                                                    extra=[extra])
    assert [type(c) for c in made] == [AveragedValidation, callbacks.EpochExtras, NaNGuard,
                                       keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau,
                                       AtomicCheckpoint, callbacks.ResumeCheckpoint, MetricsCSV, callbacks.TensorBoard,
                                       type(extra)]
    assert made[-1] is extra and made[2] is nan_guard and made[5] is checkpoint
    assert checkpoint.directory == tmp_path / rundir.CHECKPOINTS and checkpoint.monitor == "val_accuracy"
    assert made[7].path == tmp_path / rundir.METRICS and not made[7].append
    assert (checkpoint.best_value, checkpoint.best_epoch, nan_guard.step_offset) == (None, None, 0)


def test_for_run_without_terminate_on_nan_and_resumed(tmp_path):
    train = train_config(monitor="val_loss", callbacks={"terminate_on_nan": False})
    state = ResumeState(epoch=3, step=7, best_value=0.25, best_epoch=2)
    made, checkpoint, nan_guard = callbacks.for_run(tmp_path, train, Stop(), state, steps_per_epoch=10, write=False)
    assert [type(c) for c in made] == [AveragedValidation, callbacks.EpochExtras, AtomicCheckpoint,
                                       callbacks.ResumeCheckpoint, MetricsCSV, callbacks.TensorBoard]
    assert nan_guard not in made and nan_guard.step_offset == 7
    assert (checkpoint.monitor, checkpoint.write) == ("val_loss", False)
    assert (checkpoint.best_value, checkpoint.best_epoch) == (0.25, 2)
    assert made[4].append
