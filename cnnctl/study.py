"""A study directory of `cnnctl tune`: what it holds, how one is made or found again, what it was made with.

`runs/<name>-tune/` holds the experiment searched (experiment.yaml, not config.yaml: a study directory
is not a run directory), study.json (space, seed, metric, sampler, pruner, the experiment, the
cnnctl version), the Optuna study (study.db, SQLite, unless --storage names another database, e.g.
PostgreSQL shared by several machines), trials/ (one ordinary run directory per trial) and the
reports. The experiment's tune section is checked here, before any trial (space.check). No
TensorFlow and no Optuna here; tune.py runs the trials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnctl import __version__, files, history, rundir, space
from cnnctl.config import Source, load_config, read_config_file, to_yaml
from cnnctl.errors import CnnctlError, ConfigError
from cnnctl.schema import Config, TuneConfig
from cnnctl.tracking import safe_uri

STUDY = "study.json"
DATABASE = "study.db"
TRIALS = "trials"
class TuneError(CnnctlError):
    """A study that cannot be created or continued as asked."""


@dataclass
class Study:
    """A study directory and what its workers need."""

    directory: Path
    config: Config  # the experiment, with its tune section
    raw: dict  # the same as a mapping: trial configs are made from it
    storage_url: str
    name: str  # the Optuna study name
    smoke: bool = False
    parent_run_id: str | None = None  # the study's MLflow run, parent of the trials' (tracking.mlflow)
    mlflow_uri: str | None = None  # its store, the trials' too

    @property
    def tune(self) -> TuneConfig:
        return self.config.tune

    @property
    def direction(self) -> str:
        if self.tune.direction != "auto":
            return self.tune.direction
        return "maximize" if history.higher_is_better(self.tune.metric) else "minimize"

    def record(self) -> dict:
        """What the study is, stored in study.json and in the Optuna study's attributes."""
        experiment = {k: v for k, v in self.raw.items() if k not in ("tune", "tracking")}
        return {"space": space.describe(self.tune.space), "seed": self.seed, "metric": self.tune.metric,
                "direction": self.direction, "sampler": self.tune.sampler, "pruner": self.tune.pruner,
                "smoke": self.smoke, "experiment": json.loads(json.dumps(experiment))}

    @property
    def seed(self) -> int:
        return self.config.seed if self.tune.seed is None else self.tune.seed


def load_experiment(path: Path, overrides: list[str]) -> tuple[Config, dict]:
    """The experiment config (with a tune section, its space checked) and its resolved mapping."""
    config = load_config(path, overrides)
    raw, source = read_config_file(path)
    if config.tune is None:
        raise ConfigError(f"{source.locate(())}: no tune section: add `tune: {{metric: val_accuracy, trials: 12, "
                          "space: {train.optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0e-1]}}}`")
    _check_metric(config, source)
    resolved = yaml.safe_load(to_yaml(config))
    space.check(config, resolved, _located(source, overrides))
    return config, resolved


def _check_metric(config: Config, source: Source) -> None:
    """tune.metric is a value the trials' runs record: a metrics.csv column, or a test result."""
    from cnnctl.config import printable, suggest

    names = ["loss", *config.train.metrics]
    known = [*names, *(f"val_{n}" for n in names), *(f"test_{n}" for n in names)]
    metric, where = config.tune.metric, f"{source.locate(('tune', 'metric'))}: tune.metric"
    if metric not in known:
        raise ConfigError(f"{where}: {printable(metric)!r} is not recorded by the runs{suggest(metric, known)} "
                          f"(one of {', '.join(known)})")
    if metric.startswith("val_") and config.train.validation == "none":
        raise ConfigError(f"{where}: {metric} needs validation; set train.validation to split or test")


def _located(source: Source, overrides: list[str]) -> Source:
    """The file's source with the --set overrides marked, so problems in them point at the --set."""
    from cnnctl.config import apply_overrides

    raw, _ = read_config_file(source.name)
    apply_overrides(raw, overrides, source)
    return source


EXPERIMENT = "experiment.yaml"  # not config.yaml: a study directory is not a run directory


def open_directory(config: Config, raw: dict, *, runs_dir: Path | None = None, directory: Path | None = None,
                   storage: str | None = None, smoke: bool = False) -> Study:
    """The study directory `directory`, or `runs/<name>-tune`: created with study.json and the experiment,
    or (when it exists) continued with the storage it was created with."""
    directory = Path(directory) if directory is not None else Path(runs_dir) / f"{config.name}-tune"
    if (directory / STUDY).is_file():
        import os

        saved = read_study_json(directory)
        hidden = directory / ".storage"
        url = storage or os.environ.get("CNNCTL_TUNE_STORAGE") or \
            (hidden.read_text().strip() if hidden.is_file() else _default_storage(directory))
        study = Study(directory, config, raw, url, name=saved.get("study_name", config.name), smoke=smoke)
        return study
    if directory.exists() and any(directory.iterdir()):
        raise TuneError(f"{directory}: exists and is not a study directory (no {STUDY}); choose another name")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneError(f"{directory}: cannot create the study directory: {exc.strerror}") from None
    url = storage or _default_storage(directory)
    study = Study(directory, config, raw, url, name=config.name, smoke=smoke)
    files.write_text(directory / EXPERIMENT, to_yaml(config))
    if storage:  # the full URL (a password too) stays out of study.json; the default follows the directory
        files.write_text(directory / ".storage", url)
        (directory / ".storage").chmod(0o600)
    files.write_json(directory / STUDY, dict(study.record(), storage=safe_uri(url), study_name=study.name,
                                             cnnctl=__version__, created=rundir.now()))
    return study


def _default_storage(directory: Path) -> str:
    """SQLite in the study directory, wherever the directory is now (it may have been moved)."""
    return f"sqlite:///{(Path(directory) / DATABASE).resolve()}"


def read_study_json(directory: Path) -> dict:
    if not (directory / STUDY).is_file():
        raise TuneError(f"{directory}: not a study directory (no {STUDY})")
    return rundir.read_json(directory / STUDY)
