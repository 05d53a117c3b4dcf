"""Writing files atomically: a reader, or a crash, sees the old content or the new, never half of it.

Every file cnnctl writes (run files, checkpoints, plots, the image cache) goes through `atomic_path`:
a temporary file in the same folder, renamed over the target once it is complete. Temporary names
start with the target's name after a dot and end in `.tmp` (plus the target's suffix where a writer
insists on one, as Keras does with `.keras`), so leftovers of a killed process are recognisable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds.

    `suffix` is appended after `.tmp` for writers that need one (Keras: ".keras"). On any
    exception the temporary file is removed and the target is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX + suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def is_temporary(path: Path) -> bool:
    """A leftover of `atomic_path` (a process killed while writing): never to be trusted."""
    return path.name.startswith(".") and TMP_SUFFIX in path.name


def free_space(path: str | Path) -> str:
    """", 12.5 MB free on /mnt" for messages about a full disk; "" when it cannot be told."""
    import shutil

    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    return f", {free / 1e6:,.1f} MB free on {path}"


def write_error(exc: OSError, near: str | Path, doing: str):
    """A failed run's error for an OSError of a write: the file, the reason, the free space when the disk is full."""
    import errno

    from cnnctl.errors import TrainingFailed

    where = exc.filename or near
    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    space = free_space(where) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return TrainingFailed(f"{where}: cannot write ({reason}{space}) while {doing}")
