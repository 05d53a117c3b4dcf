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

from cnnctl import __version__, data, evaluation, resume, rundir, runtime
from cnnctl.config import to_yaml
from cnnctl.errors import CnnctlError, Interrupted, RunError, TrainingFailed
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
    warnings: list[str] = field(default_factory=list)  # problems that did not fail the run (plots)


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


def _prepare_resume(config: Config, resume_dir: Path) -> tuple[Path, dict, resume.ResumeState, list[str]]:
    from cnnctl.config import load_config

    run_dir = rundir.resolve(resume_dir)
    manifest = rundir.Manifest.load(run_dir).data
    state = resume.load_state(run_dir)
    if state is None:
        raise RunError(f"{run_dir}: no resume checkpoint (checkpoints/resume.json) to continue from")
    if not (run_dir / rundir.CHECKPOINTS / state.checkpoint).is_file():
        raise RunError(f"{run_dir}: resume.json names {state.checkpoint}, which is missing")
    if not runtime.is_chief():
        return run_dir, manifest, state, []
    old = load_config(run_dir / rundir.CONFIG)
    changes = resume.check_changes(old.model_dump(mode="json"), config.model_dump(mode="json"))
    if state.epoch >= config.train.epochs and manifest.get("status") == "completed":
        raise RunError(f"{run_dir}: already completed {state.epoch} of {config.train.epochs} epochs; "
                       f"raise train.epochs with --set to train longer")
    return run_dir, manifest, state, changes


def run(config: Config, *, runs_dir: str | Path = "runs", run_name: str | None = None,
        data_dir: str | Path | None = None, smoke: bool = False, callbacks: Sequence = (),
        log: Callable[[str], None] = lambda message: None, resume_from: str | Path | None = None,
        stop=None) -> TrainResult:
    """Train `config` into a new run directory (or continue `resume_from`), then evaluate it.

    `stop` (a callbacks.Stop) lets the caller ask for a graceful stop, e.g. from a signal handler:
    the run writes a resume checkpoint after the current step and raises `Interrupted`.
    Keras' global precision policy is set for the run and put back afterwards, so a run leaves
    the calling process (a test, a notebook) as it found it.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _run(config, runs_dir=runs_dir, run_name=run_name, data_dir=data_dir, smoke=smoke,
                    callbacks=callbacks, log=log, resume_from=resume_from, stop=stop)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config: Config, *, runs_dir: str | Path = "runs", run_name: str | None = None,
        data_dir: str | Path | None = None, smoke: bool = False, callbacks: Sequence = (),
        log: Callable[[str], None] = lambda message: None, resume_from: str | Path | None = None,
        stop=None) -> TrainResult:
    """run() without the precision-policy bookkeeping."""
    from cnnctl.callbacks import Stop

    stop = stop or Stop()
    started, start_time = time.perf_counter(), rundir.now()
    state, changes, previous = None, [], {}
    if resume_from is not None:
        run_dir, previous, state, changes = _prepare_resume(config, Path(resume_from))
        smoke = bool(previous.get("smoke"))
    if smoke:
        config = smoke_config(config)
    name = rundir.check_name(run_name if run_name is not None else config.name)
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
    steps_per_epoch = math.ceil(len(splits.x_train) / config.train.batch_size)
    spe, spe_reason = runtime.steps_per_execution(config.runtime.steps_per_execution, steps_per_epoch,
                                                  config.train.checkpoint_every_steps, state.step if state else 0,
                                                  plan.distribute)
    if state is not None:
        if previous.get("dataset", {}).get("files") != splits.identity.get("files") or \
                previous.get("dataset", {}).get("fingerprint") != splits.identity.get("fingerprint"):
            raise RunError(f"{run_dir}: the dataset differs from the one this run was trained on "
                           f"(compare manifest.json 'dataset'); resume needs the same data")
        if not chief:
            run_dir = Path(tempfile.mkdtemp(prefix="cnnctl-worker-"))
    else:
        run_dir = rundir.create(runs_dir, name) if chief else \
            Path(tempfile.mkdtemp(prefix="cnnctl-worker-"))
    manifest = rundir.Manifest(run_dir, dict(previous) if chief else {})
    common = dict(
        status="running", python=platform.python_version(), platform=platform.platform(), **runtime.versions(),
        device=plan.device, device_reason=plan.device_reason, precision=plan.precision,
        precision_reason=plan.precision_reason, jit_compile=plan.jit_compile, distribute=plan.distribute,
        strategy=type(strategy).__name__, replicas=strategy.num_replicas_in_sync, steps_per_execution=spe,
        steps_per_execution_reason=spe_reason, end_time=None,
    )
    if state is None:
        manifest.update(cnnctl=__version__, name=run_dir.name, config_name=config.name, smoke=smoke,
                        command=sys.argv, seed=config.seed, deterministic=config.runtime.deterministic,
                        dataset=splits.identity, class_names=splits.class_names, start_time=start_time,
                        wall_seconds=None, **common)
    else:
        resumes = list(manifest.data.get("resumes", []))
        resumes.append({"time": start_time, "from_epoch": state.epoch, "from_step": state.step,
                        "command": sys.argv, "changed": {k: _lookup(config, k) for k in changes}})
        manifest.update(resumes=resumes, **common)
    rundir.write_text(run_dir / rundir.CONFIG, to_yaml(config))
    elapsed_before = float(manifest.data.get("wall_seconds") or 0.0) if state is not None else 0.0

    def finish(**fields):
        manifest.update(end_time=rundir.now(),
                        wall_seconds=round(elapsed_before + time.perf_counter() - started, 2), **fields)

    try:
        result = _fit_and_evaluate(config, splits, plan, spe, strategy, run_dir, chief, callbacks, log, smoke, stop,
                                   state)
    except KeyboardInterrupt:
        finish(status="interrupted")
        raise
    except CnnctlError as exc:
        finish(status="failed", error=exc.message)
        raise
    except Exception as exc:
        finish(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise TrainingFailed(f"training failed: {type(exc).__name__}: {exc}",
                             hint=f"run directory: {run_dir}; rerun with --debug for the traceback") from exc
    if stop.reason == "interrupt":
        finish(status="interrupted", interrupted_at={"epoch": (stop.where or (None, None))[0],
                                                     "step": (stop.where or (None, None))[1]})
        raise Interrupted(f"stopped by signal {stop.signal}; a resume checkpoint is in {run_dir}",
                          run_dir=run_dir, signal_number=stop.signal or 2)
    result.wall_seconds = round(elapsed_before + time.perf_counter() - started, 2)
    finish(status=result.status, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
           images_per_second=result.images_per_second, expect=result.expect,
           **({"error": result.message} if result.message else {}),
           **({"warnings": result.warnings} if result.warnings else {}))
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _lookup(config: Config, dotted: str):
    value = config.model_dump(mode="json")
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _fit_and_evaluate(config, splits, plan, steps_per_execution, strategy, run_dir, chief, extra_callbacks, log,
                      smoke, stop, state) -> TrainResult:
    import keras

    from cnnctl import callbacks as cb
    from cnnctl.model import build_model

    train_cfg = config.train
    num_classes = len(splits.class_names)
    one_hot = train_cfg.loss == "categorical_crossentropy"
    steps_per_epoch = math.ceil(len(splits.x_train) / train_cfg.batch_size)

    def epochs_from(start_epoch, skip_steps=0, epochs=None):
        return data.make_epoch_dataset(splits.x_train, splits.y_train, batch_size=train_cfg.batch_size,
                                       num_classes=num_classes, one_hot=one_hot, shuffle=train_cfg.shuffle,
                                       seed=config.seed, start_epoch=start_epoch, skip_steps=skip_steps,
                                       epochs=epochs)

    def fixed(x, y):
        return data.make_dataset(x, y, batch_size=train_cfg.batch_size, num_classes=num_classes, one_hot=one_hot,
                                 shuffle=False, seed=config.seed)

    val_ds = fixed(splits.x_val, splits.y_val) if splits.x_val is not None else None
    with strategy.scope():
        model = build_model(config.model, name=config.name, float32_output=plan.precision != "float32")
        model.compile(optimizer=make_optimizer(train_cfg.optimizer, steps_per_epoch, train_cfg.epochs),
                      loss=train_cfg.loss, metrics=make_metrics(train_cfg), jit_compile=plan.jit_compile,
                      steps_per_execution=steps_per_execution)
        if plan.distribute == "multi_worker":
            _build_for_multi_worker(model, epochs_from(0, epochs=1))
        if state is not None:
            resume.restore(model, run_dir, state)
    if state is None:
        rundir.write_text(run_dir / rundir.SUMMARY, summary_text(config, model, plan.precision))
    else:
        resume.reconcile_metrics(run_dir / rundir.METRICS, state)

    checkpoint = cb.AtomicCheckpoint(run_dir / rundir.CHECKPOINTS, monitor=train_cfg.monitor, write=chief, stop=stop,
                                     best_value=state.best_value if state else None,
                                     best_epoch=state.best_epoch if state else None)
    configured = cb.from_config(train_cfg.callbacks)
    resumer = cb.ResumeCheckpoint(run_dir, stop, checkpoint, configured, every_steps=train_cfg.checkpoint_every_steps,
                                  steps_per_epoch=steps_per_epoch, initial=state, write=chief)
    nan_guard = cb.NaNGuard(stop, step_offset=state.step if state else 0)
    callback_list = [
        cb.EpochExtras(),
        *([nan_guard] if train_cfg.callbacks.terminate_on_nan else []),
        *configured,
        checkpoint,
        resumer,
        cb.MetricsCSV(run_dir / rundir.METRICS, append=state is not None, stop=stop),
        cb.TensorBoard(log_dir=str(run_dir / rundir.TENSORBOARD), write_graph=False, profile_batch=0, stop=stop),
        *extra_callbacks,
    ]

    start_epoch, skip = (state.epoch, state.step) if state else (0, 0)
    if skip and start_epoch < train_cfg.epochs:  # finish the interrupted epoch first
        model.fit(epochs_from(start_epoch, skip, epochs=1), validation_data=val_ds, initial_epoch=start_epoch,
                  epochs=start_epoch + 1, steps_per_epoch=steps_per_epoch - skip, callbacks=callback_list,
                  shuffle=False, verbose=0)
        start_epoch += 1
        nan_guard.step_offset = 0
    if start_epoch < train_cfg.epochs and not model.stop_training and not stop.reason:
        model.fit(epochs_from(start_epoch), validation_data=val_ds, initial_epoch=start_epoch,
                  epochs=train_cfg.epochs, steps_per_epoch=steps_per_epoch, callbacks=callback_list,
                  shuffle=False, verbose=0)
    history = read_history(run_dir / rundir.METRICS) if chief else {}
    epochs_run = len(history.get("epoch", []))
    if chief:
        rundir.write_json(run_dir / rundir.HISTORY, history)

    status, message, report = "completed", None, None
    if stop.reason == "nan":
        status = "failed"
        message = f"loss became NaN at {nan_where(*stop.where, steps_per_execution)}; the last good checkpoint is kept"
        log(message)
    elif stop.reason == "interrupt":
        return TrainResult(run_dir, "interrupted", epochs_run, checkpoint.best_epoch, 0.0, None, None, history)
    elif chief and (run_dir / rundir.BEST).exists():
        best = keras.saving.load_model(run_dir / rundir.BEST)
        probabilities = best.predict(fixed(splits.x_test, splits.y_test), verbose=0)
        report = evaluation.report(probabilities, splits.y_test, splits.class_names, train_cfg.top_k)
        report.update(checkpoint="checkpoints/best.keras", best_epoch=checkpoint.best_epoch, created=rundir.now())
        rundir.write_json(run_dir / rundir.EVAL, report)
    plot_warnings = _write_plots(run_dir, report, splits.x_test, log) if chief else []
    images = _steady_images_per_second(history, len(splits.x_train))
    return TrainResult(run_dir, status, epochs_run, checkpoint.best_epoch, 0.0, images, report, history,
                       check_expectations(config, report, history, model.count_params(), smoke), message,
                       warnings=plot_warnings)


def nan_where(epoch: int, step: int, steps_per_execution: int) -> str:
    """Where a NaN loss was seen: Keras reports the loss once per `steps_per_execution` steps."""
    if steps_per_execution <= 1:
        return f"epoch {epoch}, step {step}"
    return f"epoch {epoch}, one of steps {max(1, step - steps_per_execution + 1)}-{step}"


def _write_plots(run_dir, report, test_images, log) -> list[str]:
    """plots/ after eval.json; a plot that cannot be drawn is a warning, never a failed run."""
    from cnnctl.plots import try_write_run_plots

    problems = try_write_run_plots(run_dir, report=report, test_images=test_images)
    for problem in problems:
        log(f"warning: {problem}")
    return problems


def _build_for_multi_worker(model, dataset) -> None:
    """Build model, loss and metrics before fit under MultiWorkerMirroredStrategy.

    Keras 3's fit first "reduces" a distributed input batch just to learn its shapes, which
    MultiWorkerMirroredStrategy cannot do (keras-team/keras#20585: "Attempt to convert a value
    (PerReplica...) to a Tensor"). Building from one plain batch first, and skipping that step
    on this model, is all the workaround needs; training itself is Keras' own.
    """
    model._symbolic_build(data_batch=next(iter(dataset.take(1))))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def read_history(path: Path) -> dict:
    """history.json's content from metrics.csv: {"epoch": [...], "loss": [...], ...}."""
    import csv

    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0].keys()) if rows else []
    return {c: [int(r[c]) if c == "epoch" else (float(r[c]) if r[c] not in ("", None) else None) for r in rows]
            for c in columns}
