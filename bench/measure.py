"""Measuring child processes (wall time, peak RSS and CPU time of exactly that child) and the machine."""

from __future__ import annotations

import datetime
import os
import platform
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")


@dataclass
class Child:
    argv: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_mb: float  # ru_maxrss of this child alone (os.wait4 on its pid), not RUSAGE_CHILDREN
    cpu_seconds: float
    timed_out: bool
    log: str  # where its stdout and stderr went

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error(self) -> str:
        """A one-paragraph reason for a failed child: exit status and the end of its output."""
        why = "timed out" if self.timed_out else f"exit status {self.returncode}"
        try:
            tail = Path(self.log).read_text(errors="replace")[-1500:].strip()
        except OSError:
            tail = ""
        return f"{' '.join(self.argv[:4])} ...: {why}" + (f"\n{tail}" if tail else "")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "argv"} | {"command": " ".join(self.argv)}


def run_child(argv: list[str], *, log: Path, env: dict | None = None, cwd: Path | None = None,
              timeout: float | None = None) -> Child:
    """Run argv to completion and reap it with os.wait4, which returns that one child's rusage."""
    log.parent.mkdir(parents=True, exist_ok=True)
    state = {"reaped": False, "timed_out": False}
    lock = threading.Lock()
    with open(log, "wb") as output:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)

        def kill():
            with lock:
                if not state["reaped"]:
                    state["timed_out"] = True
                    os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM of the harness: never leave the child behind
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            raise
        finally:
            with lock:
                state["reaped"] = True
            if timer:
                timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it again
    return Child(list(map(str, argv)), proc.returncode, round(wall, 3), round(usage.ru_maxrss / 1024, 1),
                 round(usage.ru_utime + usage.ru_stime, 2), state["timed_out"], str(log))


def portable(value, root: Path):
    """value (a string, or lists and dicts of them) with this machine's paths written so that they mean the
    same on another: under the checkout `root` relative to it (bench/run.py, .venv/bin/python), beside it
    as ../name (../shared/datasets/mnist.npz), in the temp folder as $TMP/... Results are committed."""
    places = {str(root): "", tempfile.gettempdir(): "$TMP/"}
    if root.parent != root.parent.parent:  # a checkout at / has no outside
        places.setdefault(str(root.parent), "../")
    # A prefix counts only at the start of a path (not a same-named folder deeper in one) and whole components.
    pattern = re.compile(r"(?<![\w.~+/-])(" + "|".join(map(re.escape, sorted(places, key=len, reverse=True)))
                         + r")(/|(?![\w.~+-]))")

    def replace(match: re.Match) -> str:
        prefix = places[match.group(1)]
        return prefix if match.group(2) else prefix.rstrip("/") or "."

    if isinstance(value, str):
        return pattern.sub(replace, value)
    if isinstance(value, dict):
        return {key: portable(item, root) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item, root) for item in value]
    return value


def median_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(found.group(1).split()) if found else set()
    return {"model": model.group(1).strip() if model else platform.processor() or "unknown",
            **{flag: flag in flags for flag in CPU_FLAGS}}


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git(root: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def machine(root: Path) -> dict:
    """CPU model and the flags that decide cnnctl's precision, cores, versions, date and current load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_at_start": list(os.getloadavg()),
        "tensorflow": _version("tensorflow-cpu", "tensorflow", "tensorflow-intel"),
        "keras": _version("keras"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cnnctl": {"version": _version("cnnctl"), **_git(root)},
    }
