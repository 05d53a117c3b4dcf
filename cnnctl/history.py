"""A run's per-epoch values (metrics.csv, history.json) and which way each metric improves.

`higher_is_better` is the one rule for a metric's direction: best checkpoints, early stopping,
the plateau scheduler, `cnnctl runs` and `cnnctl compare` all use it.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from cnnctl.rundir import HISTORY, METRICS

NOT_METRICS = ("epoch", "epochs", "learning_rate", "epoch_seconds")  # columns that are not metrics


def higher_is_better(metric: str) -> bool:
    """accuracy, top_k_accuracy, f1, fmeasure, ... go up; loss and everything else goes down."""
    name = metric.removeprefix("val_")
    return "acc" in name or name.endswith("f1") or name.startswith(("f1", "fmeasure"))


def mode(metric: str) -> str:
    """Keras' `mode` for a monitored metric: "max" or "min"."""
    return "max" if higher_is_better(metric) else "min"


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return not math.isnan(value)
    return value > best if higher_is_better(metric) else value < best


def best(values: list[float | None], metric: str) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher_is_better(metric) else min(finite)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_metrics_csv(path: str | Path) -> dict[str, list]:
    """metrics.csv as columns: {"epoch": [1, 2, ...], "loss": [...], ...}; empty cells are None.

    {} when the file is missing or unreadable (a run killed before its first epoch has none).
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    columns = list(rows[0].keys()) if rows else []
    history: dict[str, list] = {}
    for column in columns:
        values = [_number(row.get(column)) for row in rows]
        history[column] = [None if v is None else int(v) for v in values] if column == "epoch" else values
    return history


def csv_columns(path: str | Path) -> list[str] | None:
    """The metric columns of an existing metrics.csv (its header without `epoch`), or None."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except OSError:
        return None
    return header[1:] if header else None


def load(run_dir: str | Path) -> dict[str, list]:
    """Per-epoch values of a run: history.json, else metrics.csv (written epoch by epoch), else {}."""
    run_dir = Path(run_dir)
    try:
        data = json.loads((run_dir / HISTORY).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {k: [_number(v) for v in values] for k, values in data.items() if isinstance(values, list)}
    except (OSError, ValueError):
        pass
    return read_metrics_csv(run_dir / METRICS)


def metric_names(history: dict) -> list[str]:
    """loss first, then the other training metrics, each of which may have a val_ twin."""
    names = [k for k in history if not k.startswith("val_") and k not in NOT_METRICS]
    names += [k[4:] for k in history if k.startswith("val_") and k[4:] not in names]  # validation-only
    return sorted(names, key=lambda k: (k != "loss", k))


def steady_images_per_second(history: dict, examples: int) -> float | None:
    """Training images per second over the epochs after the first (which pays for tracing)."""
    seconds = [s for s in history.get("epoch_seconds") or [] if s]
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return round(examples / statistics.median(steady), 1) if steady else None
