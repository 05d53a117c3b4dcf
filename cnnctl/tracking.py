"""Experiment tracking: a run directory mirrored into an MLflow run, from our own callback.

MLflow's Keras autologging patches `Model.fit`; cnnctl logs instead from what it writes itself, so
the MLflow run holds exactly the run directory's values: the resolved config as flattened params,
metrics.csv row by row with step = epoch, tags for versions, device, precision, seed, dataset and
status, and the small files as artifacts (the best model only with `log_models`).

Tracking never costs a run: every MLflow call is guarded; a store that is unreachable, slow or
failing is noted in the manifest (`tracking.mlflow.problems`) and training goes on. `sync` (also
run at the end of every tracked run) logs whatever is missing, idempotently: running it twice
changes nothing. MLflow is imported only here, only when tracking is asked for.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnctl import history, rundir
from cnnctl.errors import CnnctlError

EXTRA = "pip install 'cnnctl[mlflow]'"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param's value
ARTIFACTS = (rundir.CONFIG, rundir.SUMMARY, rundir.EVAL, rundir.MANIFEST, rundir.METRICS)
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}


class TrackingError(CnnctlError):
    """Tracking asked for but not possible (MLflow missing, a bad URI)."""


def default_uri(runs_dir: str | Path) -> str:
    """SQLite in the runs directory: `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows it."""
    return f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def check_uri(uri: str) -> str:
    """A tracking URI MLflow can use, else TrackingError (before any run directory is made)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in SCHEMES:
        raise TrackingError(f"--mlflow / tracking.mlflow.uri {uri[:100]!r}: not a tracking URI MLflow can use "
                            f"(it starts with one of {', '.join(s + ':' for s in SCHEMES)})")
    return uri


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingError("tracking with MLflow needs the mlflow package, which is not installed",
                            hint=EXTRA) from None


def _quiet_client(uri: str):
    """An MlflowClient that gives up on an unreachable server in seconds instead of retrying for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def safe_uri(uri: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)


def param_key(dotted: str) -> str:
    """MLflow keys allow no brackets: model.layers[0].Conv2D.filters -> model.layers.0.Conv2D.filters."""
    return re.sub(r"\[(\d+)\]", r".\1", dotted)


def params_of(config: dict) -> dict[str, str]:
    from cnnctl.runs import flatten

    return {param_key(k): str(v)[:PARAM_VALUE_LIMIT] for k, v in flatten(config).items() if v is not None}


def tags_of(manifest: dict) -> dict[str, str]:
    dataset = manifest.get("dataset") or {}
    tags = {"cnnctl.version": manifest.get("cnnctl"), "cnnctl.tensorflow": manifest.get("tensorflow"),
            "cnnctl.keras": manifest.get("keras"), "cnnctl.device": manifest.get("device"),
            "cnnctl.precision": manifest.get("precision"), "cnnctl.seed": manifest.get("seed"),
            "cnnctl.dataset": dataset.get("dataset"), "cnnctl.status": manifest.get("status"),
            "cnnctl.run_dir": manifest.get("run_dir"), "cnnctl.smoke": manifest.get("smoke"),
            "cnnctl.dataset_sha256": ",".join(f.get("sha256", "")[:16] for f in dataset.get("files", [])
                                              if f.get("sha256")) or None}
    return {k: str(v) for k, v in tags.items() if v is not None}


@dataclass
class Tracker:
    """One run directory's MLflow run: created (or continued on resume), fed epoch by epoch, synced."""

    uri: str
    experiment: str
    log_models: bool = False
    run_id: str | None = None
    parent_run_id: str | None = None
    problems: list[str] = field(default_factory=list)
    logged_epochs: set[int] = field(default_factory=set)
    _client: object = None

    @property
    def client(self):
        if self._client is None:
            self._client = _quiet_client(self.uri)
        return self._client

    def _guard(self, what: str, call, *args, **kwargs):
        """Run one MLflow call; a failure is a problem noted, never an exception in training."""
        if len(self.problems) >= 3:  # the store is gone: stop paying a timeout every epoch; sync fills in later
            return None
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of the store, in any of its clients' words
            self.problems.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            return None

    def start(self, run_name: str) -> str | None:
        """The MLflow run: a new one, or the one this run directory already has (resume)."""
        if self.run_id is not None:
            self._guard("continue the run", self.client.update_run, self.run_id, status="RUNNING")
            steps = self._guard("read the logged epochs", self.client.get_metric_history, self.run_id, "loss")
            self.logged_epochs = {m.step for m in steps or []}
            return self.run_id
        experiment = self._guard("open the experiment", self._experiment_id)
        if experiment is None:
            return None
        tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}
        run = self._guard("create the run", self.client.create_run, experiment, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id if run is not None else None
        return self.run_id

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        # A local SQLite store keeps its artifacts beside it (MLflow's default is ./mlruns of the current
        # directory); a server decides for itself.
        location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri() \
            if self.uri.startswith("sqlite:///") else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
        """One metrics.csv row, step = epoch, unless that epoch is already in the run."""
        if self.run_id is None or epoch in self.logged_epochs:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, epoch) for k, v in row.items()
                   if k != "epoch" and v is not None and math.isfinite(float(v))]
        if self._guard(f"log epoch {epoch}", self.client.log_batch, self.run_id, metrics=metrics) is not None \
                or not self.problems:
            self.logged_epochs.add(epoch)

    def record(self) -> dict:
        """What the manifest keeps of the MLflow run."""
        return {"uri": safe_uri(self.uri), "experiment": self.experiment, "run_id": self.run_id,
                "parent_run_id": self.parent_run_id, "log_models": self.log_models,
                "logged_epochs": sorted(self.logged_epochs), "problems": self.problems[:10]}


def sync(tracker: Tracker, run_dir: Path) -> Tracker:
    """Make the MLflow run hold the run directory: params, tags, each epoch once, artifacts, status.

    Idempotent: params are set to the same values, epochs already in the run are skipped, artifacts
    replace themselves, tags and status are set again.
    """
    run_dir = Path(run_dir)
    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    if tracker.run_id is None:
        tracker.start(run_dir.name)
    if tracker.run_id is None:
        return tracker
    import yaml
    from mlflow.entities import Param, RunTag

    client = tracker.client
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text(encoding="utf-8"))
    logged = client.get_run(tracker.run_id).data.params if not tracker.problems else {}
    wanted = params_of(config)
    params = [Param(k, v) for k, v in wanted.items() if k not in logged]
    tags = [RunTag(k, v) for k, v in tags_of(dict(manifest, run_dir=str(run_dir.resolve()))).items()]
    # MLflow params never change: a value changed with --set on resume is noted as a tag
    tags += [RunTag(f"cnnctl.changed.{k}"[:250], v) for k, v in wanted.items() if k in logged and logged[k] != v]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        tracker._guard("log params", client.log_batch, tracker.run_id, params=params[start:start + 100])
    tracker._guard("set tags", client.log_batch, tracker.run_id, tags=tags)
    steps = tracker._guard("read the logged epochs", client.get_metric_history, tracker.run_id, "loss")
    tracker.logged_epochs |= {m.step for m in steps or []}
    columns = history.read_metrics_csv(run_dir / rundir.METRICS)
    for index, epoch in enumerate(columns.get("epoch", [])):
        tracker.log_epoch(epoch, {k: v[index] for k, v in columns.items()})
    rundir.Manifest.load(run_dir).update(tracking={"mlflow": tracker.record()})  # as uploaded, below
    for name in (*[a for a in ARTIFACTS if a != rundir.MANIFEST], rundir.MANIFEST):  # the manifest last
        if (run_dir / name).is_file():
            tracker._guard(f"upload {name}", client.log_artifact, tracker.run_id, str(run_dir / name))
    if (run_dir / rundir.PLOTS).is_dir():
        tracker._guard("upload plots/", client.log_artifacts, tracker.run_id, str(run_dir / rundir.PLOTS), "plots")
    if tracker.log_models and (run_dir / rundir.BEST).is_file():
        tracker._guard("upload the best model", client.log_artifact, tracker.run_id, str(run_dir / rundir.BEST),
                       "model")
    status = STATUS.get(manifest.get("status"), "FAILED")
    if status == "RUNNING":
        tracker._guard("set the status", client.update_run, tracker.run_id, status="RUNNING")
    else:
        tracker._guard("set the status", client.set_terminated, tracker.run_id, status=status)
    return tracker


def for_run(run_dir: Path, uri: str | None = None) -> Tracker:
    """The tracker of an existing run directory (`cnnctl sync`): its recorded MLflow run, or a new run
    at `uri` (default: the recorded store, else SQLite in the runs directory)."""
    manifest = rundir.read_json(Path(run_dir) / rundir.MANIFEST)
    recorded = (manifest.get("tracking") or {}).get("mlflow") or {}
    if uri is None and "***" in str(recorded.get("uri", "")):
        raise TrackingError(f"{run_dir}: the run was tracked at {recorded['uri']}; give --mlflow URI with the password")
    target = check_uri(uri or recorded.get("uri") or default_uri(Path(run_dir).parent))
    same_store = safe_uri(target) == recorded.get("uri")
    return Tracker(target, recorded.get("experiment") or manifest.get("config_name") or Path(run_dir).name,
                   bool(recorded.get("log_models")), recorded.get("run_id") if same_store else None,
                   recorded.get("parent_run_id") if same_store else None)


def configured(config, runs_dir: str | Path, uri: str | None = None, parent_run_id: str | None = None,
               manifest: dict | None = None, run_id: str | None = None) -> Tracker | None:
    """The tracker a run asks for: `tracking.mlflow` in its config, or `uri` (--mlflow; "" for the default
    store). A resumed run (its `manifest`) continues its own MLflow run. None without tracking."""
    section = getattr(getattr(config, "tracking", None), "mlflow", None)
    recorded = ((manifest or {}).get("tracking") or {}).get("mlflow") or {}
    if section is None and uri is None and not recorded:
        return None
    require_mlflow()
    target = uri or (section.uri if section is not None and section.uri else None) or recorded.get("uri") \
        or default_uri(runs_dir)
    if "***" in target:
        raise TrackingError(f"the run was tracked at {target}; give --mlflow URI with the password")
    check_uri(target)
    experiment = (section.experiment if section is not None and section.experiment else None) \
        or recorded.get("experiment") or config.name
    log_models = bool(section.log_models) if section is not None else bool(recorded.get("log_models"))
    same_store = safe_uri(target) == recorded.get("uri")
    return Tracker(target, experiment, log_models, run_id or (recorded.get("run_id") if same_store else None),
                   parent_run_id or recorded.get("parent_run_id"))


def attach(tracker: Tracker | None, manifest, run_dir: Path) -> Tracker | None:
    """Start (or continue) the MLflow run of a run directory and note it in the manifest."""
    if tracker is not None:
        tracker.start(Path(run_dir).name)
        manifest.update(tracking={"mlflow": tracker.record()})
    return tracker


def finish(tracker: Tracker | None, manifest, run_dir: Path, log=lambda message: None) -> None:
    """At the end of a run, however it ended: sync what is missing, set the status, note what was not logged."""
    if tracker is None:
        return
    try:
        sync(tracker, run_dir)
    except Exception as exc:  # noqa: BLE001 - tracking never costs a run
        tracker.problems.append(f"sync: {type(exc).__name__}: {str(exc)[:200]}")
    manifest.data["tracking"] = {"mlflow": tracker.record()}
    manifest.update()
    if tracker.problems:
        log(f"warning: MLflow: not all logged ({tracker.problems[0]}); later: cnnctl sync {run_dir}")


def sync_all(paths: list[Path], uri: str | None = None) -> list[dict]:
    """`cnnctl sync`: each run directory given (or each run in a runs directory given) logged to MLflow."""
    require_mlflow()
    from cnnctl.runs import list_runs

    run_dirs = []
    for path in map(Path, paths):
        if (path / rundir.MANIFEST).is_file():
            run_dirs.append(path)
        elif path.is_dir():
            run_dirs += [Path(row["path"]) for row in list_runs(path) if (Path(row["path"]) / rundir.MANIFEST).is_file()]
        else:
            raise TrackingError(f"{path}: neither a run directory nor a runs directory")
    synced = []
    for run_dir in run_dirs:
        with rundir.lock(run_dir, "sync"):
            tracker = sync(for_run(run_dir, uri), run_dir)
            manifest = rundir.Manifest.load(run_dir)
            manifest.update(tracking={"mlflow": tracker.record()})
        synced.append({"run": str(run_dir), "run_id": tracker.run_id, "uri": safe_uri(tracker.uri),
                       "epochs": len(tracker.logged_epochs), "problems": tracker.problems})
    return synced
