"""`cnnctl tune`: the trials of a study (study.py), run by Optuna in one process or several.

Optuna is the search engine and the distributed store; cnnctl adds the config, the run directories
and the guarantees:

* heartbeats: a trial whose process died (SIGKILL, a crashed machine) is marked failed once its
  heartbeat is stale and is retried with the same values under a new trial number;
* the study runs to `tune.trials` completed or pruned trials, however many workers share it: a
  worker starts a trial only while the finished trials plus the live ones ahead of it are short of
  that number, and a retry waiting in the queue goes before a new trial;
* a study remembers its space, seed, metric, experiment and cnnctl version, and refuses to continue
  with others.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

from cnnctl import __version__, files, rundir, space
from cnnctl import study as studies
from cnnctl.config import to_yaml
from cnnctl.errors import ConfigError, Interrupted
from cnnctl.study import TRIALS, Study, TuneError
from cnnctl.tracking import safe_uri

HEARTBEAT_SECONDS = 2  # a live worker's trial refreshes its heartbeat this often
GRACE_SECONDS = 10  # a RUNNING trial whose heartbeat is older is failed (and retried)
MAX_RETRIES = 3


def _driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the postgres extra installs psycopg2."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _storage(url: str):
    import optuna

    url = _driver_url(url)
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else
        {"connect_args": {"timeout": 60}},
        heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))


def _sampler(study: Study, offset: int = 0):
    """The study's sampler; `offset` (a trial's number) varies the seed so that a continued study or another
    worker does not draw the same values again, while one worker's search stays reproducible."""
    import optuna

    seed = (study.seed + offset) % 2**32
    if study.tune.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(study.tune.space), seed=seed)
    if study.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, study.tune.trials // 3)))


def _pruner(study: Study):
    import optuna

    return {"none": optuna.pruners.NopPruner, "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=1),
            "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[study.tune.pruner]()


def open_study(study: Study):
    """The Optuna study, created or loaded; one with another space, seed or metric is refused."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # cnnctl shows trial states (and failures) itself
    # heartbeats and their retry callback are "experimental" in Optuna's words: they are what we rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module="optuna")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module="cnnctl")
    for attempt in range(5):  # processes opening a new database at once race to create its tables
        try:
            opened = optuna.create_study(storage=_storage(study.storage_url), sampler=_sampler(study),
                                         pruner=_pruner(study), study_name=study.name, direction=study.direction,
                                         load_if_exists=True)
            break
        except Exception as exc:  # noqa: BLE001 - a database that cannot be reached or read, in any driver's words
            if attempt == 4:
                raise TuneError(f"{safe_uri(study.storage_url)}: cannot open the study: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
            time.sleep(0.5 * (attempt + 1))
    wanted, stored = json.loads(json.dumps(study.record())), opened.user_attrs.get("cnnctl")
    if stored is None:
        opened.set_user_attr("cnnctl", dict(wanted, version=__version__))
    else:
        changed = [key for key in wanted if stored.get(key) != wanted[key]]
        if changed:
            what = "; ".join(_change(key, stored.get(key), wanted[key]) for key in changed)
            raise TuneError(f"study {study.name!r} in {safe_uri(study.storage_url)} was created with another "
                            f"{', '.join(changed)} ({what})",
                            hint="start a new study (another config name, or a new study directory)")
    return opened


def finished(trials) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _change(key: str, was, now) -> str:
    """What changed in one recorded property of a study: the keys of a mapping, else the two values."""
    from cnnctl.resume import changed_keys

    if isinstance(was, dict) and isinstance(now, dict):
        keys = changed_keys(was, now)
        shown = [f"{key}.{k}: was {json.dumps(_at(was, k))[:60]}, now {json.dumps(_at(now, k))[:60]}" for k in keys[:5]]
        return "; ".join(shown) + (f"; and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"{key}: was {json.dumps(was)[:200]}, now {json.dumps(now)[:200]}"


def _at(mapping: dict, dotted: str):
    """The value at a dotted key of `changed_keys` (keys may themselves hold dots: tried longest first)."""
    if dotted in mapping:
        return mapping[dotted]
    for cut in range(len(dotted), 0, -1):
        head = dotted[:cut]
        if head in mapping and isinstance(mapping[head], dict) and dotted[cut:cut + 1] == ".":
            return _at(mapping[head], dotted[cut + 1:])
    return None


class TrialFailed(Exception):
    """A trial whose run failed (a NaN loss, say): recorded as failed; the study goes on."""


class _Skip(Exception):
    """This worker's trial is not needed: enough trials are done or running ahead of it."""


def _wait_for_a_place(optuna_study, trial, target: int, stop) -> None:
    """Start only while finished + live trials ahead of this one are fewer than `target`; trials of
    dead workers become failed (and are retried) once their heartbeat is stale."""
    import optuna
    from optuna.trial import TrialState

    while True:
        optuna.storages.fail_stale_trials(optuna_study)
        trials = optuna_study.get_trials(deepcopy=False)
        done = finished(trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if done >= target or stop.reason:
            trial.set_user_attr("skipped", "enough trials were done or running")
            optuna_study.stop()
            raise _Skip
        queued = any(t.state == TrialState.WAITING for t in trials)
        retry = "fixed_params" in next(t for t in trials if t.number == trial.number).system_attrs
        if queued and not retry and done + ahead + 1 >= target:
            trial.set_user_attr("skipped", "a retry waiting in the queue goes first")
            raise _Skip  # the study goes on: the next trial Optuna gives this worker is the retry
        if done + ahead < target:
            return
        time.sleep(HEARTBEAT_SECONDS)


def objective_value(study: Study, result) -> float:
    """The trial's value: the metric at its best epoch (or the test metric of its best checkpoint)."""
    metric = study.tune.metric
    if metric.startswith("test_"):
        value = (result.evaluation or {}).get(metric.removeprefix("test_"))
    else:
        values = [v for v in result.history.get(metric, []) if v is not None]
        value = (max if study.direction == "maximize" else min)(values) if values else None
    if value is None:
        raise TuneError(f"tune.metric {metric} is not among the run's metrics "
                        f"({', '.join(k for k in result.history if k != 'epoch')})")
    return float(value)


def run_worker(study: Study, *, log: Callable[[str], None] = lambda m: None, stop=None,
               timeout_minutes: float | None = None, on_trial: Callable | None = None) -> None:
    """Run trials of the study in this process until it has `tune.trials` finished ones."""
    import optuna

    from cnnctl.callbacks import Stop

    stop = stop or Stop()
    optuna_study = open_study(study)
    if finished(optuna_study.get_trials(deepcopy=False)) >= study.tune.trials:
        return

    def objective(trial):
        _wait_for_a_place(optuna_study, trial, study.tune.trials, stop)
        optuna_study.sampler = _sampler(study, offset=trial.number)  # (seed, number): no repeats across processes
        return _run_trial(study, optuna_study, trial, log, stop)

    callbacks = [optuna.study.MaxTrialsCallback(study.tune.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                           optuna.trial.TrialState.PRUNED))]
    if on_trial is not None:
        callbacks.append(lambda s, t: None if t.user_attrs.get("skipped") else on_trial(trial_row(t)))
    optuna_study.optimize(objective, callbacks=callbacks, catch=(_Skip, ConfigError, TrialFailed),
                          timeout=timeout_minutes * 60 if timeout_minutes else None, gc_after_trial=True)


def _run_trial(study: Study, optuna_study, trial, log, stop) -> float:
    import keras
    import optuna

    from cnnctl import train
    from cnnctl.callbacks import Reporter

    params = space.suggest(trial, study.tune.space)
    config = space.trial_config(copy.deepcopy(study.raw), params, f"trial {trial.number}")
    reporter = Reporter(trial, study.tune.metric)
    run_name = f"trial-{trial.number:04d}"
    quiet = lambda message: None if message.startswith("device ") else log(message)  # noqa: E731 - once a study
    try:
        result = train.run(config, runs_dir=study.directory / TRIALS, run_name=run_name, smoke=study.smoke,
                           callbacks=[reporter], stop=stop, log=quiet, parent_run_id=study.parent_run_id,
                           mlflow=study.mlflow_uri)
    except Interrupted:  # Ctrl-C: the same values are tried again when the study continues
        optuna_study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        optuna_study.stop()
        raise
    finally:
        keras.backend.clear_session()
    trial.set_user_attr("run_dir", str(Path(result.run_dir).resolve()))
    trial.set_user_attr("epochs_run", result.epochs_run)
    used = Path(result.run_dir) / rundir.CONFIG  # the config as the run used it (best.yaml, on any machine)
    trial.set_user_attr("config", used.read_text(encoding="utf-8") if used.is_file() else to_yaml(config))
    if result.status != "completed":
        raise TrialFailed(f"trial {trial.number}: the run {result.status}: {result.message}")
    value = objective_value(study, result)
    if reporter.pruned:
        _note_in_manifest(result.run_dir, trial.number, "pruned")
        raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned}")
    _note_in_manifest(result.run_dir, trial.number, "complete")
    return value


def _note_in_manifest(run_dir: Path, number: int, state: str) -> None:
    manifest = rundir.Manifest.load(run_dir)
    manifest.update(tune={"study": str(Path(run_dir).parent.parent), "trial": number, "state": state})


def summarize(study: Study) -> dict:
    """trials.csv, best.yaml (the best trial's config, ready for `cnnctl train`) and plots/; the summary."""
    import csv
    import io
    import shutil

    from optuna.trial import TrialState

    optuna_study = open_study(study)
    trials = [t for t in optuna_study.get_trials(deepcopy=False) if not t.user_attrs.get("skipped")]
    keys = list(study.tune.space)
    rows = [trial_row(t) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = optuna_study.best_trial if complete else None
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", study.tune.metric, *keys, "epochs", "seconds", "run_dir"])
    for row in rows:
        writer.writerow([row["number"], row["state"], "" if row["value"] is None else f"{row['value']:.6g}",
                         *[json.dumps(row["params"].get(k)) if isinstance(row["params"].get(k), list)
                           else row["params"].get(k, "") for k in keys], row["epochs"] or "", row["seconds"] or "",
                         row["run_dir"] or ""])
    files.write_text(study.directory / "trials.csv", buffer.getvalue())
    summary = {"study": str(study.directory), "metric": study.tune.metric, "direction": study.direction,
               "trials": rows, "finished": finished(trials), "target": study.tune.trials, "best": None,
               "warnings": []}
    if best is not None:
        best_dir = Path(best.user_attrs["run_dir"])
        if best.user_attrs.get("config"):  # recorded in the study: the best run may be on another machine
            files.write_text(study.directory / "best.yaml", best.user_attrs["config"])
        else:
            shutil.copyfile(best_dir / rundir.CONFIG, study.directory / "best.yaml")
        summary["best"] = {"number": best.number, "value": best.value, "run_dir": str(best_dir),
                           "params": {k: _param(v) for k, v in best.params.items()},
                           "config": str(study.directory / "best.yaml")}
    if study.parent_run_id and summary["finished"] >= study.tune.trials:  # the study's MLflow run is done
        from cnnctl import tracking

        parent = tracking.configured(study.config, study.directory.parent, study.mlflow_uri, run_id=study.parent_run_id)
        parent._guard("end the study's run", parent.client.set_terminated, study.parent_run_id, "FINISHED")
        summary["warnings"] += parent.problems
    from cnnctl.plots import try_study_plots

    summary["warnings"] += try_study_plots(rows, keys, study.tune.metric, study.direction,
                                           _importances(optuna_study), study.directory / "plots")
    return summary


def _param(value):
    """A trial parameter as the config takes it (choices are stored as JSON text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _importances(optuna_study) -> dict[str, float]:
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # "importances will be equal" for a handful of trials: the plot shows it
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(optuna_study)
    except (RuntimeError, ValueError, ZeroDivisionError):  # fewer than two finished trials, or no variation
        return {}


def run(study: Study, workers: int = 1, timeout_minutes: float | None = None, *,
        log: Callable[[str], None] = lambda m: None, stop=None, on_trial: Callable | None = None) -> int:
    """Run the study's trials: in this process, or in `workers` processes on this machine. The exit code."""
    try:
        if workers <= 1:
            run_worker(study, log=log, stop=stop, timeout_minutes=timeout_minutes, on_trial=on_trial)
            return 0
        return run_workers(study, workers, timeout_minutes=timeout_minutes, log=log, stop=stop)
    except Interrupted as exc:  # the interrupted trial is tried again with the same values when the study goes on
        exc.hint = f"continue with: cnnctl tune --resume {study.directory}"
        raise


def run_workers(study: Study, workers: int, *, timeout_minutes: float | None, log: Callable[[str], None],
                stop=None) -> int:
    """`workers` processes (`cnnctl tune --resume DIR --worker`) against the study; the worst exit code.
    A stop asked of this process (Ctrl-C, SIGTERM) is passed on to each worker, which stops cleanly."""
    import os
    import signal
    import subprocess
    import sys

    open_study(study)  # created here, before the workers race to create it
    command = [sys.executable, "-m", "cnnctl", "tune", "--resume", str(study.directory), "--worker"]
    if timeout_minutes:
        command += ["--timeout", str(timeout_minutes)]
    env = dict(os.environ, CNNCTL_TUNE_STORAGE=study.storage_url)
    procs = [subprocess.Popen(command, env=env, start_new_session=True, stdout=sys.stderr) for _ in range(workers)]
    log(f"{workers} workers started: pids {', '.join(str(p.pid) for p in procs)}")
    passed_on = False
    while any(p.poll() is None for p in procs):
        if stop is not None and stop.reason and not passed_on:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            passed_on = True
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    if passed_on:
        raise Interrupted(f"stopped by signal {stop.signal}; the workers wrote what they had done",
                          run_dir=study.directory, signal_number=stop.signal or 2)
    return max(codes, key=abs)


def trial_row(trial) -> dict:
    """A finished Optuna trial as the summary and the progress lines show it."""
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "params": {k: _param(v) for k, v in trial.params.items()},
            "epochs": trial.user_attrs.get("epochs_run"), "run_dir": trial.user_attrs.get("run_dir"),
            "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            "retry_of": trial.user_attrs.get("retry_of") or trial.system_attrs.get("failed_trial")}


def start(config_path: Path | None, *, resume_dir: Path | None = None, overrides: list[str] = (),
          trials: int | None = None, runs_dir: Path = Path("runs"), storage: str | None = None,
          smoke: bool = False) -> Study:
    """The study a `cnnctl tune` command works on: a new or existing directory for CONFIG, or --resume DIR.
    `trials` (--trials) sets tune.trials; --smoke runs 2 trials on synthetic data."""
    trials = 2 if smoke else trials
    overrides = list(overrides) + ([f"tune.trials={trials}"] if trials else [])
    if resume_dir is not None:
        studies.read_study_json(Path(resume_dir))
        config, raw = studies.load_experiment(Path(resume_dir) / studies.EXPERIMENT, overrides)
        saved = rundir.read_json(Path(resume_dir) / studies.STUDY)
        return _tracked(studies.open_directory(config, raw, directory=resume_dir, storage=storage,
                                       smoke=bool(saved.get("smoke"))))
    config, raw = studies.load_experiment(config_path, overrides)
    if config.tracking is not None and config.tracking.mlflow is not None:
        from cnnctl.tracking import require_mlflow

        require_mlflow()  # before the study directory is made
    directory = Path(runs_dir) / f"{config.name}-{'smoke-' if smoke else ''}tune"
    return _tracked(studies.open_directory(config, raw, directory=directory, storage=storage, smoke=smoke))


def _tracked(study: Study) -> Study:
    """With tracking.mlflow, the study's own MLflow run (created once, kept in study.json) is the trials' parent."""
    from cnnctl import tracking

    saved = rundir.read_json(study.directory / studies.STUDY)
    # the default store is the runs directory's (runs/mlflow.db), as for the runs trained there
    tracker = tracking.configured(study.config, study.directory.parent, run_id=saved.get("mlflow_run_id"))
    if tracker is None:
        return study
    if tracker.start(study.directory.name) and tracker.run_id != saved.get("mlflow_run_id"):
        files.write_json(study.directory / studies.STUDY, dict(saved, mlflow_run_id=tracker.run_id))
    study.parent_run_id, study.mlflow_uri = tracker.run_id, tracker.uri
    return study
