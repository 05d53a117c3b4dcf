"""The search space of `cnnctl tune`: dotted config keys (as --set takes them) and their ranges.

A trial's config is the experiment with the trial's values set at those keys, validated exactly as
`cnnctl train` validates a config. Before the first trial every dimension is tried at its extremes
(low and high, or every choice), so a key that does not exist, a range the field does not accept or
a choice that makes an impossible model is reported at once, located at its key in the file.
No TensorFlow and no Optuna here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from cnnctl.config import (
    Source,
    apply_overrides,
    at_most,
    check_layer_names,
    check_shapes,
    format_path,
    parse_key_path,
    printable,
    validate,
)
from cnnctl.errors import ConfigError
from cnnctl.schema import Config, Dimension


def trial_config(raw: dict, params: dict[str, Any], name: str) -> Config:
    """The experiment `raw` (a config mapping) with `params` set at their dotted keys, without its
    tune section, validated; ConfigError problems are located at the --set each value became."""
    raw = {k: v for k, v in copy.deepcopy(raw).items() if k != "tune"}
    source = Source(name)
    raw = apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in params.items()], source)
    for path in source.overrides:  # a problem in a value is reported as "--set KEY: ...", the value cut away
        source.overrides[path] = format_path(path)
    config = validate(raw, source)
    check_layer_names(config, source)
    check_shapes(config, source)
    return config


def _without_location(problem: str, name: str) -> str:
    """A problem of `trial_config` as it reads after the key: its location ('--set PATH: ' of the value or
    a key above it, or the file's name for a problem of the whole stack) removed."""
    import re

    for prefix in (r"--set [^:]+: ", re.escape(f"{name}: ")):
        if re.match(prefix, problem):
            return re.sub(f"^{prefix}", "", problem, count=1)
    return problem


def check(config: Config, raw: dict, source: Source) -> None:
    """Every dimension of config.tune.space, at its extremes, gives a valid config; all problems at once."""
    problems = []
    for key, dimension in config.tune.space.items():
        where = f"{source.locate(('tune', 'space', key), at_key=True)}: tune.space.{printable(key)}"
        try:
            path = parse_key_path(key)
        except ValueError as exc:
            problems.append(f"{where}: not a key path ({exc})")
            continue
        if path[0] in ("tune", "name"):
            problems.append(f"{where}: {format_path(path[:1])} cannot be searched")
            continue
        for value in dimension.extremes():
            try:
                trial_config(raw, {key: value}, source.name)
            except ConfigError as exc:
                reasons = "; ".join(_without_location(p, source.name) for p in exc.problems)
                problems.append(f"{where}: with {json.dumps(value)[:60]}: {reasons}")
                break
    if config.tune.sampler == "grid":
        problems += [f"{source.locate(('tune', 'space', key), at_key=True)}: tune.space.{printable(key)}: the grid sampler "
                     f"needs a choice or an int with a step" for key, d in config.tune.space.items()
                     if d.kind not in ("choice", "integer") or (d.kind == "integer" and not d.step and
                                                                d.integer[1] - d.integer[0] > 1000)]
    if problems:
        raise ConfigError(at_most(problems, source))


def grid(space: dict[str, Dimension]) -> dict[str, list]:
    """Optuna's GridSampler search space: every value of each dimension."""
    values = {}
    for key, d in space.items():
        if d.choice is not None:
            values[key] = [json.dumps(c) for c in d.choice]  # as `suggest` proposes them
        else:
            low, high = d.integer
            values[key] = list(range(low, high + 1, int(d.step or 1)))
    return values


def suggest(trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's value for each dimension, drawn by Optuna's `trial.suggest_*`."""
    params = {}
    for key, d in space.items():
        if d.kind == "uniform":
            params[key] = trial.suggest_float(key, *d.uniform, step=d.step)
        elif d.kind == "log_uniform":
            params[key] = trial.suggest_float(key, *d.log_uniform, log=True)
        elif d.kind == "integer":
            low, high = d.extremes()  # the top value a step reaches
            params[key] = trial.suggest_int(key, low, high, step=int(d.step or 1))
        else:  # Optuna stores choices as JSON-able scalars: a list choice goes by its index
            index = trial.suggest_categorical(key, [json.dumps(c) for c in d.choice])
            params[key] = json.loads(index)
    return params


def describe(space: dict[str, Dimension]) -> dict:
    """The space as stored with a study (to refuse a changed space on a later run)."""
    return json.loads(json.dumps({key: d.model_dump(by_alias=True, exclude_none=True) for key, d in space.items()}))
