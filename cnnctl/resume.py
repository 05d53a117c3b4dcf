"""Resume checkpoints: everything a run needs to continue exactly where it stopped.

`checkpoints/resume.json` names the current `checkpoints/resume-<epoch>-<step>.keras` (weights,
optimizer state with its step counter and so the learning-rate schedule's position, dropout RNG
state) and holds the training position and the callbacks' counters, plus the same for the
checkpoint before it (`previous`). The .keras file is written under a temporary name and renamed,
then resume.json is replaced atomically, then the checkpoint before the previous one is removed:
a kill at any instant leaves resume.json naming complete files, and a damaged current checkpoint
falls back to the previous one.

resume.json is read like a config: validated (types, ranges, names of files inside checkpoints/,
agreement with metrics.csv) before anything is loaded or removed.
"""

from __future__ import annotations

import csv
import errno
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnnctl import files, rundir
from cnnctl.errors import RunError, TrainingFailed
from cnnctl.files import atomic_path, write_json, write_text

STATE = "checkpoints/resume.json"
CHECKPOINT_NAME = re.compile(r"^resume-(\d{5})-(\d{7})\.keras$")
MAX_EPOCHS = 100_000  # the schema's limit on train.epochs
# Keys that may change on --resume (they do not change what the run has learnt so far).
SAFE_TO_CHANGE = ("train.epochs", "train.callbacks", "train.checkpoint_every_steps", "runtime.steps_per_execution",
                  "expect", "description", "tune", "tracking", "evaluate")

Count = Annotated[int, Field(ge=0, le=1 << 40)]
Number = float | int | None


class ResumeState(BaseModel):
    """One resume checkpoint's training position and counters (resume.json, validated on load)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epoch: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]  # epochs completed (the epoch to run next, 0-based)
    step: Count = 0  # steps of that epoch already done (0: at an epoch boundary)
    checkpoint: str = ""  # file name under checkpoints/
    best_value: float | None = None  # AtomicCheckpoint
    best_epoch: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = None
    callbacks: dict[str, dict[str, Number]] = {}  # name -> {attribute: value}
    last_logs: dict[str, float] = {}  # the last complete epoch's logs (for metrics.csv)
    rng: list[list[int]] = []  # states of the model's seed generators (dropout)
    previous: ResumeState | None = None  # the checkpoint before this one, kept as a fallback

    @model_validator(mode="after")
    def _consistent(self) -> ResumeState:
        if self.checkpoint:
            match = CHECKPOINT_NAME.fullmatch(self.checkpoint)
            if match is None:
                raise ValueError(f"checkpoint must be a file name like resume-00003-0000000.keras, "
                                 f"got {_cut(self.checkpoint)!r}")
            if (int(match[1]), int(match[2])) != (self.epoch, self.step):
                raise ValueError(f"checkpoint {self.checkpoint} is not the one of epoch {self.epoch}, "
                                 f"step {self.step}")
        if self.best_epoch is not None and self.best_epoch > self.epoch:
            raise ValueError(f"best_epoch {self.best_epoch} is after the {self.epoch} epochs done")
        if self.previous is not None and (self.previous.previous is not None or
                                          (self.previous.epoch, self.previous.step) >= (self.epoch, self.step)):
            raise ValueError("previous must be one earlier checkpoint")
        return self

    def plain(self) -> dict:
        return self.model_dump(mode="json")


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _seed_states(model) -> list:
    # Keras saves weights and optimizer variables in a .keras file but not the seed generators'
    # states, and without them dropout after a resume would differ from an uninterrupted run.
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def rng_state(model) -> list:
    return [[int(x) for x in v.numpy().tolist()] for v in _seed_states(model)]


def restore(model, run_dir: Path, state: ResumeState) -> None:
    """Load weights, optimizer state and RNG state of a resume checkpoint into a compiled model."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(Path(run_dir) / rundir.CHECKPOINTS / state.checkpoint)
    variables = _seed_states(model)
    if len(variables) == len(state.rng):
        for variable, value in zip(variables, state.rng, strict=True):
            variable.assign(value)


# Attributes of Keras callbacks that carry their progress from epoch to epoch.
CALLBACK_STATE = {
    "EarlyStopping": ("wait", "best", "stopped_epoch", "best_epoch"),
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
}


def callback_state(callbacks) -> dict:
    state = {}
    for callback in callbacks:
        name = type(callback).__name__
        if name in CALLBACK_STATE:
            state[name] = {attr: _plain(getattr(callback, attr, None)) for attr in CALLBACK_STATE[name]}
    return state


def restore_callbacks(callbacks, state: dict) -> None:
    """Put saved counters back after Keras' on_train_begin has reset them."""
    for callback in callbacks:
        saved = state.get(type(callback).__name__)
        if saved:
            for attr, value in saved.items():
                if value is not None:
                    setattr(callback, attr, value)


def _plain(value):
    try:
        return float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        return None


def save(model, run_dir: Path, state: ResumeState) -> None:
    """Write a resume checkpoint atomically; a full disk leaves the previous one current."""
    directory = Path(run_dir) / rundir.CHECKPOINTS
    name = f"resume-{state.epoch:05d}-{state.step:07d}.keras"
    current = load_state(run_dir)
    state.rng = rng_state(model)
    state.previous = current.model_copy(update={"previous": None}) if current and current.checkpoint != name \
        else (current.previous if current else None)
    try:
        with atomic_path(directory / name, suffix=".keras") as tmp:
            model.save(tmp)
        state.checkpoint = name
        write_json(Path(run_dir) / STATE, state.plain())
    except OSError as exc:
        if current is None or name not in (current.checkpoint, getattr(current.previous, "checkpoint", None)):
            (directory / name).unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise TrainingFailed(f"cannot write a resume checkpoint ({reason}{files.free_space(directory)}); the "
                             f"previous checkpoint {current.checkpoint if current else '(none)'} is kept") from None
    keep = {name, state.previous.checkpoint if state.previous else None}
    for old in (current, current.previous if current else None):
        if old is not None and old.checkpoint and old.checkpoint not in keep:
            (directory / old.checkpoint).unlink(missing_ok=True)


def load_state(run_dir: Path) -> ResumeState | None:
    """resume.json, validated: RunError naming the file and every problem; None when there is none."""
    path = Path(run_dir) / STATE
    if not path.exists():
        return None
    data = rundir.read_json(path)
    try:
        return ResumeState.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or 'resume.json'}: "
                             f"{_cut(error['msg'], 200)}" for error in exc.errors()[:5])
        raise RunError(f"{path}: not a valid resume state: {problems}") from None


def checkpoint_problem(run_dir: Path, state: ResumeState) -> str | None:
    """Why the checkpoint `state` names cannot be used (missing, outside the run, damaged), or None."""
    directory = (Path(run_dir) / rundir.CHECKPOINTS).resolve()
    path = directory / state.checkpoint
    if not state.checkpoint or not path.is_file():
        return f"{rundir.CHECKPOINTS}/{state.checkpoint or '(none)'} is missing"
    if path.resolve().parent != directory:
        return f"{rundir.CHECKPOINTS}/{state.checkpoint} leads outside the run directory"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"{rundir.CHECKPOINTS}/{state.checkpoint} is damaged ({type(exc).__name__}: {_cut(str(exc))})"
    if damaged is not None:
        return f"{rundir.CHECKPOINTS}/{state.checkpoint} is damaged (bad member {_cut(damaged)})"
    return None


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete temporary files of a killed write in checkpoints/ (never trusted); their names."""
    directory = Path(run_dir) / rundir.CHECKPOINTS
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        if files.is_temporary(path) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, path + ".")
        elif a != b:
            keys.append(path)
    return keys


def check_changes(old: dict, new: dict) -> list[str]:
    """Keys changed by --set on resume; refuse any that would change the model, data or training."""
    changed = changed_keys(old, new)
    refused = [k for k in changed if not any(k == safe or k.startswith(safe + ".") for safe in SAFE_TO_CHANGE)]
    if refused:
        raise RunError(f"--resume cannot change {', '.join(refused)}: the checkpoint was trained with the old "
                       f"value. Only {', '.join(SAFE_TO_CHANGE)} may change; start a new run for the rest.")
    return changed


def reconcile_metrics(path: Path, state: ResumeState) -> None:
    """Make metrics.csv hold exactly the epochs the checkpoint has: drop later rows, add a missing last one."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= state.epoch]
    if state.epoch > 0 and (not body or int(body[-1][0]) < state.epoch) and state.last_logs:
        body.append([str(state.epoch)] + [f"{state.last_logs[c]:.6g}" if c in state.last_logs else ""
                                          for c in header[1:]])
    write_text(path, "".join(",".join(r) + "\n" for r in [header, *body]))


@dataclass
class Resumption:
    """What `train --resume` continues from: the run (locked), its manifest so far, the state (None: the run
    stopped before its first checkpoint and starts again from scratch), the --set changes, and notes."""

    run_dir: Path
    manifest: dict
    state: ResumeState | None
    changes: dict  # dotted key -> its new value
    lock: rundir.RunLock | None = None
    notes: tuple[str, ...] = ()  # what was repaired or fallen back on, for the log and the manifest


def prepare(config, resume_dir: Path, chief: bool = True) -> Resumption:
    """Lock `resume_dir` and check it can be continued with `config` (the run's config after --set).

    Only the chief locks and repairs: it removes temporary files of a killed write and falls back to
    the previous checkpoint when the current one is damaged.
    """
    from cnnctl.config import load_config

    run_dir = rundir.resolve(resume_dir)
    lock = rundir.lock(run_dir, "train --resume") if chief else None
    try:
        manifest = rundir.Manifest.load(run_dir).data
        state, notes = _usable_state(run_dir, write=chief)
        if chief:
            notes += tuple(f"removed {name}, left by a write that was cut short" for name in remove_leftovers(run_dir))
            check_metrics(run_dir, state)
        old, new = load_config(run_dir / rundir.CONFIG).model_dump(mode="json"), config.model_dump(mode="json")
        changes = {key: _lookup(new, key) for key in check_changes(old, new)} if chief else {}
        if state is not None and state.epoch >= config.train.epochs and manifest.get("status") == "completed":
            raise RunError(f"{run_dir}: already completed {state.epoch} of {config.train.epochs} epochs; "
                           f"raise train.epochs with --set to train longer")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Resumption(run_dir, manifest, state, changes, lock, notes)


def _usable_state(run_dir: Path, write: bool) -> tuple[ResumeState | None, tuple[str, ...]]:
    """The newest resume state whose checkpoint is whole; the fallback is written back to resume.json."""
    state = load_state(run_dir)
    if state is None:
        return None, ()
    problem = checkpoint_problem(run_dir, state)
    if problem is None:
        return state, ()
    previous = state.previous
    if previous is None or checkpoint_problem(run_dir, previous) is not None:
        raise RunError(f"{run_dir}: {problem}, and there is no earlier good checkpoint to resume from",
                       hint="start a new run from the config")
    if write:
        write_json(Path(run_dir) / STATE, previous.plain())
    return previous, (f"{problem}; resuming from the previous checkpoint {previous.checkpoint}",)


def check_metrics(run_dir: Path, state: ResumeState | None) -> None:
    """metrics.csv must hold epochs 1, 2, ... up to at least the checkpoint's epoch - 1."""
    from cnnctl import history

    path = Path(run_dir) / rundir.METRICS
    epochs = history.read_metrics_csv(path).get("epoch", []) if path.exists() else []
    done = state.epoch if state else 0
    if epochs != list(range(1, len(epochs) + 1)):
        shown = ", ".join("?" if e is None else str(e) for e in epochs)
        raise RunError(f"{path}: the epochs are {_cut(shown)}, not 1, 2, ...: the file was edited")
    if len(epochs) < done - 1 or (state is None and epochs):
        raise RunError(f"{path}: holds {len(epochs)} epochs, but {STATE} says {done} were done")


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
