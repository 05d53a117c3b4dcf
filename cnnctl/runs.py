"""Runs side by side: the listing of a runs directory and the comparison of a few runs.

Everything here reads the files a run directory holds (manifest.json, history.json, metrics.csv,
eval.json, config.yaml) and never imports TensorFlow or loads data. A folder
without a manifest or a config is not a run and is skipped; a run whose manifest cannot be read
is listed with status "unreadable" rather than stopping the listing, and a "running" run whose
process is gone (killed before it could say so) as "killed".
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnctl import history, rundir
from cnnctl.errors import CnnctlError, RunError

UNREADABLE = "unreadable"
KILLED = "killed"  # manifest says running, but the process that owns the run is gone


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _planned_epochs(run_dir: Path) -> int | None:
    import yaml

    try:
        config = yaml.safe_load((run_dir / rundir.CONFIG).read_text(encoding="utf-8"))
        return int(config["train"]["epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def describe(run_dir: Path) -> dict:
    """One row of the listing: what a run is, how far it got, how well it did."""
    run_dir = Path(run_dir)
    manifest = _read(run_dir / rundir.MANIFEST)
    hist = history.load(run_dir)
    evaluation = _read(run_dir / rundir.EVAL) or {}
    epochs_run = (manifest or {}).get("epochs_run")
    if epochs_run is None:
        epochs_run = len(hist.get("epoch") or hist.get("epochs") or hist.get("loss") or []) or None
    row = {
        "name": run_dir.name,
        "path": str(run_dir),
        "config": None,
        "status": UNREADABLE if manifest is None else manifest.get("status", UNREADABLE),
        "epochs_run": epochs_run,
        "epochs": _planned_epochs(run_dir),
        "best_val_accuracy": history.best(hist.get("val_accuracy", []), "val_accuracy"),
        "test_accuracy": _number(evaluation.get("accuracy")),
        "wall_seconds": _number((manifest or {}).get("wall_seconds")),
        "start_time": (manifest or {}).get("start_time"),
        "smoke": bool((manifest or {}).get("smoke")),
    }
    if manifest is not None:
        row["config"] = manifest.get("config_name")
    if row["status"] == "running" and not _alive(run_dir, manifest):
        row["status"] = KILLED
    return row


def _alive(run_dir: Path, manifest: dict) -> bool:
    """Is the process that wrote "running" still there? Its lock says so (on any host sharing the
    file system); a run without a lock file is judged by its pid, on its own host only."""
    alive = rundir.owner_alive(run_dir)
    if alive is not None:
        return alive
    import os
    import socket

    pid = manifest.get("pid")
    if manifest.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _is_run(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and \
        ((path / rundir.MANIFEST).exists() or (path / rundir.CONFIG).is_file())


def _started(row: dict, path: Path) -> float:
    try:
        return datetime.fromisoformat(row["start_time"]).timestamp()
    except (TypeError, ValueError):
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0


def list_runs(runs_dir: str | Path) -> list[dict]:
    """Every run directly under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no such runs directory")
    try:
        children = sorted(runs_dir.iterdir())
    except OSError as exc:
        raise RunError(f"{runs_dir}: cannot list the runs directory: {exc.strerror}") from None
    rows = [(describe(path), path) for path in children if _is_run(path)]
    rows.sort(key=lambda pair: (_started(*pair), pair[0]["name"]), reverse=True)
    return [row for row, _ in rows]


# ---------------------------------------------------------------- compare


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as dotted keys: {"model.layers[0].Conv2D.filters": 32, ...}."""
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: {}}
        items: dict[str, Any] = {}
        for key, item in value.items():
            items.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(value, list):
        if not value:
            return {prefix: []}
        items = {}
        for index, item in enumerate(value):
            items.update(flatten(item, f"{prefix}[{index}]"))
        return items
    return {prefix: value}


MISSING = "(absent)"


def config_differences(configs: list[dict]) -> dict[str, list]:
    """The dotted keys whose values are not the same in every config, with each config's value."""
    flat = [flatten(config or {}) for config in configs]
    keys = sorted({key for f in flat for key in f}, key=_natural)
    return {key: [f.get(key, MISSING) for f in flat] for key in keys
            if any(f.get(key, MISSING) != flat[0].get(key, MISSING) for f in flat[1:])}


def _natural(key: str) -> list:
    """model.layers[10] after model.layers[9]."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _params(config_path: Path) -> int | None:
    """Parameter count from the config's layer stack (no TensorFlow needed)."""
    from cnnctl.config import load_config
    from cnnctl.shapes import infer

    try:
        return sum(layer.params for layer in infer(load_config(config_path).model))
    except (CnnctlError, OSError):
        return None


def compare(run_dirs: list[str | Path]) -> dict:
    """Metrics (final and best of each), test results, size, time and config differences of runs."""
    import yaml

    runs, configs = [], []
    for given in run_dirs:
        run_dir = rundir.resolve(given)
        try:
            configs.append(yaml.safe_load((run_dir / rundir.CONFIG).read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"{run_dir / rundir.CONFIG}: unreadable: {exc}") from None
        hist = history.load(run_dir)
        metrics = {}
        for name in history.metric_names(hist):
            for key in (name, f"val_{name}"):
                values = [v for v in hist.get(key, []) if v is not None]
                if values:
                    metrics[key] = {"final": values[-1], "best": history.best(values, key)}
        evaluation = _read(run_dir / rundir.EVAL) or {}
        row = describe(run_dir)
        row.update(metrics=metrics, test_loss=_number(evaluation.get("loss")), params=_params(run_dir / rundir.CONFIG),
                   history=hist)
        runs.append(row)
    names = [run["name"] for run in runs]
    if len(set(names)) < len(names):  # runs of the same name in different folders
        for run in runs:
            run["name"] = run["path"]
    return {"runs": runs, "config_differences": config_differences(configs)}


def default_plot_path(run_dirs: list[str | Path]) -> Path:
    """`compare-<name>-<name>....png` in the first run's parent folder (a short name for many runs), with
    -2, -3, ... added when that file exists: a default never replaces anything."""
    paths = [Path(p) for p in run_dirs]
    names = [p.resolve().name for p in paths]
    stem = "compare-" + "-".join(names)
    if len(stem) > 120:
        stem = f"compare-{names[0]}-and-{len(names) - 1}-more"
    folder = paths[0].resolve().parent
    candidates = (folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png") for n in range(1, 10_000))
    return next(path for path in candidates if not path.exists())


def compare_with_plot(run_dirs: list[str | Path], out: str | Path | None = None, force: bool = False) -> dict:
    """`compare`, plus its overlaid learning curves written to `out` (checked) or the default path."""
    if len(run_dirs) < 2:
        raise RunError("compare needs at least two run directories")
    destination = rundir.check_output(out, force=force) if out is not None else default_plot_path(run_dirs)
    if destination.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise RunError(f"{destination}: the plot file must end in .png, .svg or .pdf")
    result = compare(run_dirs)
    from cnnctl.plots import compare_curves

    try:
        compare_curves(result["runs"], destination)
    except OSError as exc:
        raise RunError(f"{destination}: cannot write the plot: {exc.strerror}") from None
    result["plot"] = str(destination)
    return result
