"""The data of a config, or of an existing run: the one place `data.load_splits` is called.

A run's manifest records where its dataset was found (`dataset.files`, absolute paths) and what it
was (sizes, sha256 of each file; an image folder's image count and bytes). Every command given a
run (evaluate, predict, export, its plots, `train --resume`) looks there first, so the run directory
is all it needs; `--data-dir` still overrides. Data that is missing, or not the data the run was
trained on, is an error that says what the run was trained on and where cnnctl looked.
"""

from __future__ import annotations

from pathlib import Path

from cnnctl import data, rundir
from cnnctl.config import load_config, smoke_config
from cnnctl.errors import DataError, RunError
from cnnctl.schema import Config
from cnnctl.shapes import output_units

FILE_FIELDS = ("bytes", "sha256", "images")  # what must agree for each recorded file (paths may move)


def load(config: Config, *, data_dir: str | Path | None = None, validation: str = "none",
         smoke: bool = False, progress=None) -> data.Splits:
    """The dataset of `config`, split for `validation` ("none" for evaluation); synthetic for --smoke.

    `progress(done, total)` is called while an image dataset is decoded (the first time only).
    """
    return data.load_splits(config.data, input_shape=config.model.input_shape,
                            num_classes=output_units(config.model), validation=validation,
                            validation_split=config.train.validation_split, seed=config.seed,
                            data_dir=data_dir, synthetic=smoke, progress=progress)


def for_training(config: Config, run: tuple[Path, dict] | None, *, data_dir=None, smoke: bool = False,
                 progress=None) -> data.Splits:
    """The data to train on: a new run's (`run` None), or that of the run (directory, manifest) resumed."""
    if run is not None:
        return load_for_run(run[0], config, run[1], data_dir=data_dir, validation=config.train.validation,
                            progress=progress)
    return load(config, data_dir=data_dir, validation=config.train.validation, smoke=smoke, progress=progress)


def describe(splits: data.Splits, limit: int = 8) -> list[str]:
    """Lines naming the classes with their images per split, and any files skipped, for a run's start."""
    identity, names = splits.identity, splits.class_names
    counts = identity["classes"]  # {class: {split: images}}, counted once by data.load_splits
    parts = list(counts[names[0]]) if names else []
    shown = [f"{name} {'/'.join(f'{counts[name][p]:,}' for p in parts)}" for name in names[:limit]]
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    lines = [f"data {identity.get('dataset')}: {len(names)} classes, images {'/'.join(parts)}: "
             f"{', '.join(shown)}{more}"]
    if identity.get("skipped"):
        first = identity["skipped_files"][0]
        lines.append(f"skipped {identity['skipped']:,} unreadable image{'s' * (identity['skipped'] > 1)} "
                     f"(data.skip_bad_files), e.g. {first['path']}: {first['reason']}; listed in manifest.json")
    return lines


def recorded_location(identity: dict) -> Path | None:
    """Where a run found its data: the folder of a built-in's files, the image folder, the .npz file."""
    files = identity.get("files") or []
    if not files or not isinstance(files[0], dict) or not files[0].get("path"):
        return None
    path = Path(files[0]["path"])
    return path if identity.get("dataset") in ("directory", "csv", "npz") else path.parent


def trained_on(identity: dict) -> str:
    """One line naming the data a run was trained on."""
    files = identity.get("files") or []
    if not files:
        return f"the run was trained on {identity.get('dataset', 'an unrecorded dataset')}"
    first = files[0]
    what = f"{first.get('path')} ({first.get('bytes', 0):,} bytes"
    what += f", {first['images']:,} images)" if "images" in first else \
        f", sha256 {str(first.get('sha256', ''))[:12]}…)"
    more = f" and {len(files) - 1} more file{'s' * (len(files) > 2)}" if len(files) > 1 else ""
    return f"the run was trained on {identity.get('dataset')} from {what}{more}"


def differences(recorded: dict, found: dict) -> list[str]:
    """How the data found now differs from the data a run recorded (file locations may differ)."""
    problems = [f"{key} was {recorded.get(key)!r}, is {found.get(key)!r}"
                for key in ("dataset", "label_mode", "image_shape", "num_classes", "resize")
                if key in recorded and recorded.get(key) != found.get(key)]
    if recorded.get("split_digest") and recorded.get("split_digest") != found.get("split_digest"):
        problems.append("the images are not split as they were (another file list, data.split or labels)")
    old, new = recorded.get("files") or [], found.get("files") or []
    if len(old) != len(new):
        problems.append(f"{len(old)} files recorded, {len(new)} found")
    for before, now in zip(old, new, strict=False):
        for key in FILE_FIELDS:
            if key in before and before.get(key) != now.get(key):
                was, is_ = (str(v)[:12] + "…" if key == "sha256" else v for v in (before.get(key), now.get(key)))
                problems.append(f"{now.get('path')}: {key} was {was}, is {is_}")
    return problems


def load_for_run(run_dir: Path, config: Config, manifest: dict, *, data_dir: str | Path | None = None,
                 validation: str = "none", check: bool = True, progress=None) -> data.Splits:
    """The data a run was trained on, found where the run found it (or under `data_dir`), checked to be it
    (`check` False: any data the config describes, e.g. for a report written elsewhere)."""
    recorded = manifest.get("dataset") or {}
    smoke = bool(manifest.get("smoke"))
    if smoke:
        config = smoke_config(config)
    location = None if data_dir is not None or smoke else recorded_location(recorded)
    try:
        splits = load(config, data_dir=data_dir if data_dir is not None else location, validation=validation,
                      smoke=smoke, progress=progress)
    except DataError as exc:
        raise DataError(f"{run_dir}: {trained_on(recorded)}; {exc.message}", hint=exc.hint) from None
    changed = differences(recorded, splits.identity) if check and not smoke else []
    if changed:
        raise DataError(f"{run_dir}: {trained_on(recorded)}, but the data found now is not the same: "
                        f"{'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}",
                        hint="point --data-dir at the data the run was trained on")
    return splits


def test_split(run_dir: str | Path, *, data_dir: str | Path | None = None, config_path: str | Path | None = None,
               check: bool = True) -> tuple[Config, data.Splits]:
    """(config, splits without validation) of a run: test image i is the same image for every command."""
    run_dir = rundir.resolve(run_dir)
    config = load_config(config_path or run_dir / rundir.CONFIG)
    try:
        manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    except RunError:  # no or a damaged manifest: the config alone says what the data is
        manifest = {}
    splits = load_for_run(run_dir, config, manifest, data_dir=data_dir, check=check)
    return (smoke_config(config) if manifest.get("smoke") else config), splits
