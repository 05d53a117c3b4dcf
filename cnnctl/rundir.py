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
LOCK = ".lock"  # held (fcntl) by the process that owns the run: training it, or writing its results


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
        file = next((p for p in (runs_dir, *runs_dir.parents) if p.exists() and not p.is_dir()), None)
        if file == runs_dir:
            raise RunError(f"{runs_dir}: is a file, not a folder; runs are kept in a folder") from None
        why = f"{file} is a file, not a folder" if file is not None else exc.strerror
        raise RunError(f"{runs_dir}: cannot create the runs directory: {why}") from None
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

    def begin(self, fields: dict, restart: dict | None = None) -> None:
        """A new run's manifest; `restart` records a run started again from scratch in its own directory."""
        restarts = [*self.data.get("restarts", []), restart] if restart else []
        self.update(**fields, **({"restarts": restarts} if restarts else {}))

    def resumed(self, entry: dict, fields: dict) -> None:
        self.update(resumes=[*self.data.get("resumes", []), entry], **fields)


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


class RunLock:
    """An exclusive fcntl lock on RUN/.lock: one process at a time changes a run directory.

    The kernel releases it when the process ends, however it ends, so the lock of a killed
    process is simply taken over. The lock file says who holds it, for the message of a refusal.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self, purpose: str, wait: float = 1.0) -> RunLock:
        import fcntl
        import socket
        import sys
        import time

        path = self.run_dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise RunError(f"{path}: cannot open the run's lock file: {exc.strerror}") from None
        deadline = time.monotonic() + wait  # a `cnnctl runs` probing the lock holds it for microseconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    raise RunError(f"{self.run_dir}: in use by {holder}; wait for it to finish or stop it "
                                   f"first") from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                "command": " ".join(sys.argv)[:300], "since": now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock; the file stays (no unlink race)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return f"pid {int(info['pid'])} on {str(info['host'])[:64]} ({str(info['purpose'])[:40]}, since " \
               f"{str(info['since'])[:32]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock(run_dir: str | Path, purpose: str) -> RunLock:
    """Take the run's lock now (RunError naming the holder if a live process has it)."""
    return RunLock(run_dir).acquire(purpose)


def owner_alive(run_dir: str | Path) -> bool | None:
    """Is a live process holding the run's lock? None when the run has no lock file."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def enclosing_run(path: str | Path) -> Path | None:
    """The run directory that holds `path` (a file or folder inside it), if any."""
    for folder in Path(path).resolve().parents:
        if (folder / MANIFEST).is_file() and (folder / CONFIG).is_file():
            return folder
    return None


def check_output(path: str | Path, *, force: bool = False, run_folder: Path | None = None,
                 create: bool = True) -> Path:
    """A file a command was asked to write (--out): never inside a run directory (except `run_folder`, a
    run's own result folder), never over an existing file unless `force`, and its missing parent folders
    created only inside the current directory (by the caller when not `create`). Returns the path."""
    path = Path(path)
    run = enclosing_run(path)
    if run is not None and not (run_folder is not None and
                                path.resolve().is_relative_to(Path(run_folder).resolve())):
        raise RunError(f"{path}: inside the run directory {run}, whose files only its own run writes; "
                       "choose a path outside it")
    if path.is_dir() and not path.is_symlink():
        raise RunError(f"{path}: is a folder; give a file name")
    if os.path.lexists(path) and not force:
        raise RunError(f"{path}: already exists; cnnctl does not overwrite a file it did not create "
                       "(--force replaces it)")
    parent = path.parent
    if not parent.is_dir():
        inside = Path.cwd().resolve() in path.resolve().parents or \
            (run_folder is not None and Path(run_folder).resolve() in path.resolve().parents)
        if not inside:
            raise RunError(f"{parent}: no such folder (cnnctl creates folders only inside the current "
                           "directory or the run's own folders)")
        if not create:
            return path
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"{parent}: cannot create the folder: {exc.strerror}") from None
    return path
