"""Train a config into a run directory: runtime -> data -> model -> fit -> evaluate -> files.

`run()` is the whole job and returns a `TrainResult`; it never prints. Progress reaches the caller
through the Keras callbacks it passes in, and one-line notices through `log`.
"""

from __future__ import annotations

import io
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnnctl import __version__, data, evaluation, rundir, runtime
from cnnctl.config import to_yaml
from cnnctl.errors import CnnctlError, TrainingFailed
from cnnctl.schema import Config, OptimizerConfig, TrainConfig

SMOKE_STEPS = 3  # training steps of a --smoke run


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    epochs_run: int
    best_epoch: int | None
    wall_seconds: float
    images_per_second: float | None
    evaluation: dict | None
    history: dict
    expect: list[dict] = field(default_factory=list)
    message: str | None = None


def smoke_config(config: Config) -> Config:
    """The same model on a few batches of synthetic data, one epoch: proves the config runs."""
    batch = config.train.batch_size
    synthetic = config.data.synthetic.model_copy(update={"train_examples": batch * SMOKE_STEPS,
                                                         "test_examples": batch})
    return config.model_copy(update={
        "data": config.data.model_copy(update={"dataset": "synthetic", "synthetic": synthetic}),
        "train": config.train.model_copy(update={"epochs": 1}),
    })


def make_optimizer(config: OptimizerConfig, steps_per_epoch: int, epochs: int):
    import keras

    schedules = keras.optimizers.schedules
    lr = config.learning_rate
    s = config.schedule
    if s is None or s.type == "constant":
        rate = lr
    elif s.type == "inverse_time":
        rate = schedules.InverseTimeDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    elif s.type == "exponential":
        rate = schedules.ExponentialDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    else:
        total = s.decay_steps or max(1, steps_per_epoch * epochs - s.warmup_steps)
        if s.warmup_steps:
            rate = schedules.CosineDecay(0.0, total, alpha=s.alpha, warmup_target=lr, warmup_steps=s.warmup_steps)
        else:
            rate = schedules.CosineDecay(lr, total, alpha=s.alpha)
    classes = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
               "adamw": keras.optimizers.AdamW, "adagrad": keras.optimizers.Adagrad,
               "adadelta": keras.optimizers.Adadelta, "adamax": keras.optimizers.Adamax,
               "nadam": keras.optimizers.Nadam}
    return classes[config.name](learning_rate=rate, **config.keras_kwargs())


def make_metrics(config: TrainConfig) -> list:
    import keras

    metrics: list = []
    for name in config.metrics:
        if name == "accuracy":
            metrics.append("accuracy")
        elif config.loss == "categorical_crossentropy":
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
        else:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
    return metrics


def summary_text(config: Config, model, precision: str) -> str:
    from rich.console import Console

    from cnnctl.summary import render, summarize

    buffer = io.StringIO()
    render(summarize(config, model, precision), Console(file=buffer, width=100, color_system=None))
    return buffer.getvalue()


def check_expectations(config: Config, evaluation_result: dict | None, history: dict, params: int,
                       smoke: bool = False) -> list[dict]:
    """Compare with the tutorial's published figures: accuracy is met within half a point of it."""
    expect = config.expect
    if expect is None:
        return []
    checks = []
    if expect.params is not None:
        checks.append({"what": "params", "published": expect.params, "measured": params,
                       "met": params == expect.params})
    measured = {"test_accuracy": (evaluation_result or {}).get("accuracy"),
                "val_accuracy": (history.get("val_accuracy") or [None])[-1]}
    for key in ("test_accuracy", "val_accuracy"):
        published = getattr(expect, key)
        if published is not None and not smoke and measured[key] is not None:
            checks.append({"what": key, "published": published, "measured": round(float(measured[key]), 4),
                           "met": float(measured[key]) >= published - 0.005})
    return checks


def _steady_images_per_second(history: dict, examples: int) -> float | None:
    seconds = history.get("epoch_seconds") or []
    steady = seconds[1:] if len(seconds) > 1 else seconds  # the first epoch pays for tracing
    return round(examples / statistics.median(steady), 1) if steady else None


def run(config: Config, *, runs_dir: str | Path = "runs", run_name: str | None = None,
        data_dir: str | Path | None = None, smoke: bool = False, callbacks: Sequence = (),
        log: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Train `config` into a new run directory and evaluate it on the test split."""
    started, start_time = time.perf_counter(), rundir.now()
    if smoke:
        config = smoke_config(config)
    rundir.check_name(run_name or config.name)
    plan = runtime.plan(config.runtime, runtime.probe_hardware())
    log(f"device {plan.device} ({plan.device_reason}); precision {plan.precision} ({plan.precision_reason}); "
        f"XLA {'on' if plan.jit_compile else 'off'}")
    strategy = runtime.apply(plan, config.seed)

    from cnnctl.shapes import output_units

    classes = output_units(config.model)
    splits = data.load_splits(config.data, input_shape=config.model.input_shape, num_classes=classes,
                              validation=config.train.validation, validation_split=config.train.validation_split,
                              seed=config.seed, data_dir=data_dir, synthetic=smoke)
    chief = runtime.is_chief()
    run_dir = rundir.create(runs_dir, run_name or config.name) if chief else Path(tempfile.mkdtemp(prefix="cnnctl-worker-"))
    manifest = rundir.Manifest(run_dir)
    manifest.update(
        cnnctl=__version__, status="running", name=run_dir.name, config_name=config.name, smoke=smoke,
        command=sys.argv, python=platform.python_version(), platform=platform.platform(), **runtime.versions(),
        device=plan.device, device_reason=plan.device_reason, precision=plan.precision,
        precision_reason=plan.precision_reason, jit_compile=plan.jit_compile, distribute=plan.distribute,
        strategy=type(strategy).__name__, replicas=strategy.num_replicas_in_sync, seed=config.seed,
        deterministic=config.runtime.deterministic, dataset=splits.identity, class_names=splits.class_names,
        start_time=start_time, end_time=None, wall_seconds=None,
    )
    rundir.write_text(run_dir / rundir.CONFIG, to_yaml(config))
    try:
        result = _fit_and_evaluate(config, splits, plan, strategy, run_dir, chief, callbacks, log, smoke)
    except KeyboardInterrupt:
        manifest.update(status="interrupted", end_time=rundir.now(), wall_seconds=round(time.perf_counter() - started, 2))
        raise
    except CnnctlError as exc:
        manifest.update(status="failed", error=exc.message, end_time=rundir.now(),
                        wall_seconds=round(time.perf_counter() - started, 2))
        raise
    except Exception as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}", end_time=rundir.now(),
                        wall_seconds=round(time.perf_counter() - started, 2))
        raise TrainingFailed(f"training failed: {type(exc).__name__}: {exc}",
                             hint=f"run directory: {run_dir}; rerun with --debug for the traceback") from exc
    result.wall_seconds = round(time.perf_counter() - started, 2)
    manifest.update(status=result.status, end_time=rundir.now(), wall_seconds=result.wall_seconds,
                    epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                    images_per_second=result.images_per_second, expect=result.expect,
                    **({"error": result.message} if result.message else {}))
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _fit_and_evaluate(config, splits, plan, strategy, run_dir, chief, extra_callbacks, log, smoke) -> TrainResult:
    import keras

    from cnnctl import callbacks as cb
    from cnnctl.model import build_model

    train_cfg = config.train
    num_classes = len(splits.class_names)
    one_hot = train_cfg.loss == "categorical_crossentropy"

    def dataset(x, y, shuffle):
        return data.make_dataset(x, y, batch_size=train_cfg.batch_size, num_classes=num_classes, one_hot=one_hot,
                                 shuffle=shuffle, seed=config.seed, shuffle_buffer=config.data.shuffle_buffer)

    train_ds = dataset(splits.x_train, splits.y_train, train_cfg.shuffle)
    val_ds = dataset(splits.x_val, splits.y_val, False) if splits.x_val is not None else None
    steps_per_epoch = math.ceil(len(splits.x_train) / train_cfg.batch_size)
    with strategy.scope():
        model = build_model(config.model, name=config.name, float32_output=plan.precision != "float32")
        model.compile(optimizer=make_optimizer(train_cfg.optimizer, steps_per_epoch, train_cfg.epochs),
                      loss=train_cfg.loss, metrics=make_metrics(train_cfg), jit_compile=plan.jit_compile,
                      steps_per_execution=config.runtime.steps_per_execution)
    rundir.write_text(run_dir / rundir.SUMMARY, summary_text(config, model, plan.precision))

    checkpoint = cb.AtomicCheckpoint(run_dir / rundir.CHECKPOINTS, monitor=train_cfg.monitor, write=chief)
    nan_guard = cb.NaNGuard()
    callback_list = [cb.EpochExtras(), nan_guard, *cb.from_config(train_cfg.callbacks)]
    if train_cfg.callbacks.terminate_on_nan:
        callback_list.append(keras.callbacks.TerminateOnNaN())
    callback_list += [
        cb.MetricsCSV(run_dir / rundir.METRICS),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / rundir.TENSORBOARD), write_graph=False, profile_batch=0),
        checkpoint,
        *extra_callbacks,
    ]
    history = model.fit(train_ds, validation_data=val_ds, epochs=train_cfg.epochs, callbacks=callback_list,
                        shuffle=False, verbose=0).history  # the dataset shuffles itself, seeded
    history = {key: [float(v) for v in values] for key, values in history.items()}
    epochs_run = len(history.get("loss", []))
    rundir.write_json(run_dir / rundir.HISTORY, {"epochs": list(range(1, epochs_run + 1)), **history})

    status, message, report = "completed", None, None
    if nan_guard.where is not None:
        status = "failed"
        message = f"loss became NaN at epoch {nan_guard.where[0]}, step {nan_guard.where[1]}; " \
                  f"the last good checkpoint is kept"
        log(message)
    elif (run_dir / rundir.BEST).exists() or not chief:
        best = keras.saving.load_model(run_dir / rundir.BEST) if chief else model
        test_ds = dataset(splits.x_test, splits.y_test, False)
        probabilities = best.predict(test_ds, verbose=0)
        report = evaluation.report(probabilities, splits.y_test, splits.class_names, train_cfg.top_k)
        report.update(checkpoint="checkpoints/best.keras", best_epoch=checkpoint.best_epoch, created=rundir.now())
        if chief:
            rundir.write_json(run_dir / rundir.EVAL, report)
    images = _steady_images_per_second(history, len(splits.x_train))
    return TrainResult(run_dir, status, epochs_run, checkpoint.best_epoch, 0.0, images, report, history,
                       check_expectations(config, report, history, model.count_params(), smoke), message)
