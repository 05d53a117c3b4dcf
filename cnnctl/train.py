"""Train a config into a run directory: runtime -> data -> model -> fit -> evaluate -> files.

`run()` is the whole job and returns a `results.TrainResult`; it never prints. Progress reaches the
caller through the Keras callbacks it passes in, one-line notices through `log`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl import __version__, files, history, results, resume, rundata, rundir, runtime, tracking
from cnnctl.callbacks import Stop
from cnnctl.compile import labels_one_hot, make_loss, make_metrics, make_optimizer, run_class_weights
from cnnctl.config import smoke_config, to_yaml
from cnnctl.data import Splits
from cnnctl.errors import CnnctlError, Interrupted, TrainingFailed
from cnnctl.schema import Config


@dataclass
class RunContext:
    """One run's training, as `_start` sets it up: what every later step needs."""

    config: Config
    splits: Splits
    plan: runtime.Plan
    strategy: Any
    steps_per_execution: int
    run_dir: Path
    chief: bool  # only the chief writes the run directory; other workers use a temporary one
    smoke: bool
    stop: Stop
    state: resume.ResumeState | None  # where a resumed run continues from
    log: Callable[[str], None]
    callbacks: Sequence = ()  # the caller's (progress display)
    tracker: tracking.Tracker | None = None  # the run's MLflow run, if tracked
    class_weight: dict[int, float] | None = None  # train.class_weight by class index; None: unweighted

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits.x_train) / self.config.train.batch_size)


def run(config: Config, *, runs_dir: str | Path = "runs", run_name: str | None = None,
        data_dir: str | Path | None = None, smoke: bool = False, callbacks: Sequence = (),
        log: Callable[[str], None] = lambda message: None, resume_from: str | Path | None = None,
        stop: Stop | None = None, mlflow: str | None = None, parent_run_id: str | None = None,
        progress: Callable[[int, int], None] | None = None) -> results.TrainResult:
    """Train `config` into a new run directory (or continue `resume_from`), then evaluate it.

    `stop` lets the caller ask for a graceful stop (a signal handler): a resume checkpoint after the
    current step, then `Interrupted`. `mlflow` (a URI; "" for the default store) tracks the run as
    `tracking.mlflow` does. `progress(done, total)` follows a first decode of images. Keras' global
    precision policy is put back afterwards.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    started = time.perf_counter()
    locks: list[rundir.RunLock] = []  # the run's lock, held until training and evaluation are over
    try:
        resumption = resume.prepare(config, Path(resume_from), chief=runtime.is_chief()) if resume_from else None
        locks += [resumption.lock] if resumption and resumption.lock else []
        tracker = tracking.configured(config, resumption.run_dir.parent if resumption else runs_dir, mlflow,
                                      parent_run_id, resumption.manifest if resumption else None)
        ctx, manifest = _start(config, resumption, runs_dir=runs_dir, run_name=run_name, data_dir=data_dir,
                               smoke=smoke, callbacks=callbacks, log=log, stop=stop or Stop(), locks=locks,
                               progress=progress)
        ctx.tracker = tracking.attach(tracker if ctx.chief else None, manifest, ctx.run_dir)
        return _train(ctx, manifest, started)
    finally:
        for lock in locks:
            lock.release()
        keras.mixed_precision.set_global_policy(policy)


def _start(config: Config, resumption: resume.Resumption | None, *, runs_dir, run_name, data_dir, smoke, callbacks,
           log, stop, locks: list, progress=None) -> tuple[RunContext, rundir.Manifest]:
    """Runtime, data and the run directory (locked) with its manifest and config.yaml."""
    start_time = rundir.now()
    smoke = bool(resumption.manifest.get("smoke")) if resumption else smoke
    config = smoke_config(config) if smoke else config
    name = rundir.check_name(run_name if run_name is not None else config.name)
    plan = runtime.plan(config.runtime, runtime.probe_hardware())
    log(f"device {plan.device} ({plan.device_reason}); precision {plan.precision} ({plan.precision_reason}); "
        f"XLA {'on' if plan.jit_compile else 'off'}")
    for note in resumption.notes if resumption else ():
        log(f"note: {note}")
    strategy = runtime.apply(plan, config.seed)
    chief = runtime.is_chief()
    splits = rundata.for_training(config, resumption and (resumption.run_dir, resumption.manifest), data_dir=data_dir,
                                  smoke=smoke, progress=progress)
    log("\n".join(rundata.describe(splits)))
    weights, weight_fields = run_class_weights(config.train.class_weight, splits.y_train, splits.class_names, log)
    state = resumption.state if resumption else None
    steps = runtime.epoch_steps(len(splits.x_train), config.train.batch_size, strategy, plan.distribute)
    spe, spe_reason = runtime.steps_per_execution(config.runtime.steps_per_execution, steps,
                                                  config.train.checkpoint_every_steps, state.step if state else 0,
                                                  plan.distribute)
    if not chief:
        run_dir = Path(tempfile.mkdtemp(prefix="cnnctl-worker-"))
    elif resumption:
        run_dir = resumption.run_dir
    else:
        run_dir = rundir.create(runs_dir, name)
        locks.append(rundir.lock(run_dir, "train"))
    manifest = rundir.Manifest(run_dir, dict(resumption.manifest) if resumption and chief else {})
    fields = dict(status="running", **runtime.describe(plan, strategy), steps_per_execution=spe,
                  steps_per_execution_reason=spe_reason, end_time=None, **weight_fields)
    entry = {"time": start_time, "command": sys.argv, "notes": list(resumption.notes)} if resumption else None
    try:
        if state is None:  # a new run, or one that stopped before its first checkpoint and starts again
            manifest.begin(dict(fields, cnnctl=__version__, name=run_dir.name, config_name=config.name, smoke=smoke,
                                command=sys.argv, seed=config.seed, deterministic=config.runtime.deterministic,
                                dataset=splits.identity, class_names=splits.class_names, start_time=start_time,
                                wall_seconds=None), restart=entry)
        else:
            manifest.resumed(dict(entry, from_epoch=state.epoch, from_step=state.step, changed=resumption.changes),
                             fields)
        files.write_text(run_dir / rundir.CONFIG, to_yaml(config))
    except OSError as exc:
        error = files.write_error(exc, run_dir, "setting up the run directory")
        with contextlib.suppress(OSError):
            manifest.update(status="failed", error=error.message)
        raise error from None
    return RunContext(config, splits, plan, strategy, spe, run_dir, chief, smoke, stop, state, log, callbacks,
                      class_weight=weights), manifest


def _train(ctx: RunContext, manifest: rundir.Manifest, started: float) -> results.TrainResult:
    """Fit and evaluate, keeping the manifest's status true whatever happens."""
    elapsed_before = float(manifest.data.get("wall_seconds") or 0.0) if ctx.state is not None else 0.0

    def finish(**fields):
        manifest.update(end_time=rundir.now(),
                        wall_seconds=round(elapsed_before + time.perf_counter() - started, 2), **fields)
        tracking.finish(ctx.tracker, manifest, ctx.run_dir, ctx.log)

    try:
        model, checkpoint = _fit(ctx)
        result = _evaluate(ctx, model, checkpoint)
    except KeyboardInterrupt:
        finish(status="interrupted")
        raise
    except CnnctlError as exc:
        finish(status="failed", error=exc.message)
        raise
    except Exception as exc:
        finish(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise TrainingFailed(f"training failed: {type(exc).__name__}: {exc}",
                             hint=f"run directory: {ctx.run_dir}; rerun with --debug for the traceback") from exc
    stop = ctx.stop
    if stop.reason == "interrupt":
        epoch, step = stop.where or (None, None)
        finish(status="interrupted", interrupted_at={"epoch": epoch, "step": step})
        raise Interrupted(f"stopped by signal {stop.signal}; a resume checkpoint is in {ctx.run_dir}",
                          run_dir=ctx.run_dir, signal_number=stop.signal or 2)
    result.wall_seconds = round(elapsed_before + time.perf_counter() - started, 2)
    finish(status=result.status, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
           images_per_second=result.images_per_second, expect=result.expect,
           **({"error": result.message} if result.message else {}),
           **({"warnings": result.warnings} if result.warnings else {}))
    if not ctx.chief:
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
    return result


def _fit(ctx: RunContext):
    """Build (or restore) the model and run Keras' fit, finishing an interrupted epoch first."""
    from cnnctl import augment, inputs
    from cnnctl import callbacks as cb
    from cnnctl.model import build_model
    from cnnctl.summary import text as summary_text

    config, train, state, stop = ctx.config, ctx.config.train, ctx.state, ctx.stop
    # MixUp and CutMix mix labels, so they need one-hot rows (and the categorical loss) whatever train.loss says
    steps, one_hot = ctx.steps_per_epoch, labels_one_hot(train, augment.mixes(config.data.augment))
    train_data, epochs_from = inputs.training(config, ctx.splits, one_hot=one_hot, class_weight=ctx.class_weight,
                                              strategy=ctx.strategy, distribute=ctx.plan.distribute)
    val_ds = inputs.validation(config, ctx.splits, one_hot=one_hot)
    with ctx.strategy.scope():
        model = build_model(config.model, name=config.name, float32_output=ctx.plan.precision != "float32",
                            training_images=ctx.splits.x_train, seed=config.seed)
        optimizer = make_optimizer(train.optimizer, steps, train.epochs, model.trainable_variables)
        model.compile(optimizer=optimizer, loss=make_loss(train, one_hot),
                      metrics=make_metrics(train, one_hot), jit_compile=ctx.plan.jit_compile,
                      steps_per_execution=ctx.steps_per_execution)
        if ctx.plan.distribute == "multi_worker":
            runtime.build_for_multi_worker(model, next(iter(epochs_from(0, epochs=1).take(1))))
        if state is not None:
            resume.restore(model, ctx.run_dir, state)
    if state is None:
        files.write_text(ctx.run_dir / rundir.SUMMARY, summary_text(config, model, ctx.plan.precision))
    else:
        resume.reconcile_metrics(ctx.run_dir / rundir.METRICS, state)

    callback_list, checkpoint, nan_guard = cb.for_run(ctx.run_dir, train, stop, state, steps, write=ctx.chief,
                                                      extra=ctx.callbacks, tracker=ctx.tracker)
    start_epoch, skip = (state.epoch, state.step) if state else (0, 0)
    if skip and start_epoch < train.epochs:  # finish the interrupted epoch first
        model.fit(train_data(start_epoch, skip, epochs=1), validation_data=val_ds, initial_epoch=start_epoch,
                  epochs=start_epoch + 1, steps_per_epoch=steps - skip, callbacks=callback_list, shuffle=False, verbose=0)
        start_epoch += 1
        nan_guard.step_offset = 0
    if start_epoch < train.epochs and not model.stop_training and not stop.reason:
        model.fit(train_data(start_epoch, epochs=train.epochs - start_epoch), validation_data=val_ds,
                  initial_epoch=start_epoch, epochs=train.epochs,
                  steps_per_epoch=steps, callbacks=callback_list, shuffle=False, verbose=0)
    return model, checkpoint


def _evaluate(ctx: RunContext, model, checkpoint) -> results.TrainResult:
    """history.json, then the best checkpoint's evaluation, eval.json and plots (chief only)."""
    from cnnctl.callbacks import nan_where
    from cnnctl.model import load_model

    run_dir, splits, stop = ctx.run_dir, ctx.splits, ctx.stop
    hist = history.read_metrics_csv(run_dir / rundir.METRICS) if ctx.chief else {}
    epochs_run, status, message, report, warnings = len(hist.get("epoch", [])), "completed", None, None, []
    if ctx.chief:
        files.write_json(run_dir / rundir.HISTORY, hist)
    if stop.reason == "nan":
        status, message = "failed", f"loss became NaN at {nan_where(*stop.where, ctx.steps_per_execution)}; the " \
                                    "last good checkpoint is kept"
        ctx.log(message)
    elif stop.reason == "interrupt":
        return results.TrainResult(run_dir, "interrupted", epochs_run, checkpoint.best_epoch, 0.0, None, None, hist)
    elif ctx.chief and (run_dir / rundir.BEST).exists():
        report = results.evaluate_model(load_model(run_dir / rundir.BEST), splits.x_test, splits.y_test,
                                        splits.class_names, **results.evaluation_settings(ctx.config))
        report.update(checkpoint=rundir.BEST, best_epoch=checkpoint.best_epoch, created=rundir.now())
    if ctx.chief:  # a failed run gets its learning curves, without eval.json
        warnings = results.write_evaluation(run_dir, report, splits.x_test, ctx.log)
    expect = results.check_expectations(ctx.config, report, hist, model.count_params(), ctx.smoke)
    return results.TrainResult(run_dir, status, epochs_run, checkpoint.best_epoch, 0.0, history.steady_images_per_second(
        hist, len(splits.x_train)), report, hist, expect, message, warnings=warnings)

