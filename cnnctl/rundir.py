"""The run directory: created atomically, written atomically, never shared between two runs.

```
runs/<name>[-N]/
  config.yaml  summary.txt  manifest.json  metrics.csv  history.json  eval.json
  checkpoints/best.keras  checkpoints/last.keras  tensorboard/  plots/
```
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnctl.errors import RunError
from cnnctl.files import write_json

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_SUFFIX = 10_000

CONFIG = "config.yaml"
SUMMARY = "summary.txt"
MANIFEST = "manifest.json"
METRICS = "metrics.csv"
HISTORY = "history.json"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
BEST = "checkpoints/best.keras"
LAST = "checkpoints/last.keras"
TENSORBOARD = "tensorboard"
PLOTS = "plots"


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """A run name is one path component: letters, digits, '.', '_', '-'; no '/', '..' or control characters."""
    if not NAME_RE.fullmatch(name) or ".." in name:  # fullmatch: `$` alone would accept "name\n"
        raise RunError(f"run name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit, without '..'")
    return name


def create(runs_dir: str | Path, name: str) -> Path:
    """Make a new, empty run directory `runs_dir/name`, or `name-2`, `name-3`, ...

    `os.mkdir` either creates the directory or fails: two runs started at the same instant can
    never get the same one.
    """
    check_name(name)
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{runs_dir}: cannot create the runs directory: {exc.strerror}") from None
    if not os.access(runs_dir, os.W_OK | os.X_OK):
        raise RunError(f"{runs_dir}: the runs directory is not writable")
    for n in range(1, MAX_SUFFIX):
        path = runs_dir / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(f"{path}: cannot create the run directory: {exc.strerror}") from None
        (path / CHECKPOINTS).mkdir()
        return path
    raise RunError(f"{runs_dir}: {MAX_SUFFIX} runs named {name!r} already exist")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable: {exc}") from None


class Manifest:
    """manifest.json, rewritten atomically on every update."""

    def __init__(self, run_dir: Path, data: dict | None = None):
        self.path = Path(run_dir) / MANIFEST
        self.data = data or {}

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        return cls(run_dir, read_json(Path(run_dir) / MANIFEST))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        write_json(self.path, self.data)


def resolve(path: str | Path) -> Path:
    """The run directory named by `path` (a run directory, or its manifest), checked to be one."""
    path = Path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    if not (path / CONFIG).is_file():
        raise RunError(f"{path}: not a cnnctl run directory (no {CONFIG})")
    return path
