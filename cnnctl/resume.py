"""Resume checkpoints: everything a run needs to continue exactly where it stopped.

`checkpoints/resume.json` names the current `checkpoints/resume-<epoch>-<step>.keras` (weights,
optimizer state with its step counter and so the learning-rate schedule's position, dropout RNG
state) and holds the training position and the callbacks' counters. The .keras file is written
under a temporary name and renamed, then resume.json is replaced atomically, then the previous
.keras file is removed: a kill at any instant leaves resume.json naming a complete file.
"""

from __future__ import annotations

import csv
import errno
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnctl import rundir
from cnnctl.errors import RunError, TrainingFailed
from cnnctl.files import atomic_path, write_json, write_text

STATE = "checkpoints/resume.json"
# Keys that may change on --resume (they do not change what the run has learnt so far).
SAFE_TO_CHANGE = ("train.epochs", "train.callbacks", "train.checkpoint_every_steps", "runtime.steps_per_execution",
                  "expect", "description")


@dataclass
class ResumeState:
    epoch: int  # epochs completed (the epoch to run next, 0-based)
    step: int = 0  # steps of that epoch already done (0: at an epoch boundary)
    checkpoint: str = ""  # file name under checkpoints/
    best_value: float | None = None  # AtomicCheckpoint
    best_epoch: int | None = None
    callbacks: dict = field(default_factory=dict)  # name -> {attribute: value}
    last_logs: dict = field(default_factory=dict)  # the last complete epoch's logs (for metrics.csv)
    rng: list = field(default_factory=list)  # states of the model's seed generators (dropout)


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
    previous = load_state(run_dir)
    state.rng = rng_state(model)
    try:
        with atomic_path(directory / name, suffix=".keras") as tmp:
            model.save(tmp)
        state.checkpoint = name
        write_json(Path(run_dir) / STATE, asdict(state))
    except OSError as exc:
        if previous is None or previous.checkpoint != name:
            (directory / name).unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise TrainingFailed(f"cannot write a resume checkpoint ({reason}); the previous checkpoint "
                             f"{previous.checkpoint if previous else '(none)'} is kept") from None
    if previous and previous.checkpoint and previous.checkpoint != name:
        (directory / previous.checkpoint).unlink(missing_ok=True)


def load_state(run_dir: Path) -> ResumeState | None:
    path = Path(run_dir) / STATE
    if not path.exists():
        return None
    data = rundir.read_json(path)
    try:
        return ResumeState(**data)
    except TypeError as exc:
        raise RunError(f"{path}: not a resume state: {exc}") from None


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
    """What `train --resume` continues from: the run, its manifest so far, the state, the --set changes."""

    run_dir: Path
    manifest: dict
    state: ResumeState
    changes: dict  # dotted key -> its new value


def prepare(config, resume_dir: Path, chief: bool = True) -> Resumption:
    """Check that `resume_dir` can be continued with `config` (the run's config after --set)."""
    from cnnctl.config import load_config

    run_dir = rundir.resolve(resume_dir)
    manifest = rundir.Manifest.load(run_dir).data
    state = load_state(run_dir)
    if state is None:
        raise RunError(f"{run_dir}: no resume checkpoint (checkpoints/resume.json) to continue from")
    if not (run_dir / rundir.CHECKPOINTS / state.checkpoint).is_file():
        raise RunError(f"{run_dir}: resume.json names {state.checkpoint}, which is missing")
    if not chief:
        return Resumption(run_dir, manifest, state, {})
    old, new = load_config(run_dir / rundir.CONFIG).model_dump(mode="json"), config.model_dump(mode="json")
    changes = {key: _lookup(new, key) for key in check_changes(old, new)}
    if state.epoch >= config.train.epochs and manifest.get("status") == "completed":
        raise RunError(f"{run_dir}: already completed {state.epoch} of {config.train.epochs} epochs; "
                       f"raise train.epochs with --set to train longer")
    return Resumption(run_dir, manifest, state, changes)


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
