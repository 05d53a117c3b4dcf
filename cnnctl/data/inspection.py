"""What `cnnctl data` reports of a dataset without training: its classes and their images per split
(split as the run would split them), the image sizes and modes found, every file training would
refuse, identical images in different splits, and the decode cache.

Image files are decoded exactly as training decodes them (decode.decode_file with the model's input
shape, data.resize and data.max_image_pixels), so "unreadable" means what training would refuse;
sizes and modes come from the headers, duplicates from the sha256 of the file bytes. Arrays
(built-in datasets, npz, synthetic) are hashed image by image. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.data.arrays import check_classes, held_out, load_npz, synthetic_splits
from cnnctl.data.builtin import load_builtin
from cnnctl.data.decode import CHUNK, decode_file, workers
from cnnctl.data.folders import cache_dir, cache_file, fingerprint
from cnnctl.data.images import LAYOUTS, hold_out_validation, list_files
from cnnctl.errors import DataError
from cnnctl.schema import Config

SIZES_SHOWN = 10  # the most frequent (width, height) listed; the rest are counted
MODES = {"1": "gray", "L": "gray", "I": "gray", "I;16": "gray", "I;16B": "gray", "I;16L": "gray", "I;16N": "gray",
         "F": "gray", "RGB": "RGB", "RGBA": "RGBA", "P": "palette", "PA": "palette"}  # Pillow mode -> kind; else other


@dataclass(frozen=True)
class FileFacts:
    """One image file: its header's size and mode and the sha256 of its bytes, or why training would refuse it."""

    width: int | None = None
    height: int | None = None
    mode: str | None = None
    sha256: str | None = None
    reason: str | None = None


def inspect_dataset(config: Config, data_dir=None, *, num_classes: int | None = None, progress=None) -> dict:
    """The JSON-able report of `config`'s dataset. `num_classes` is the model's number of outputs (synthetic
    data needs it; other datasets are compared with it); `progress(done, total)` is called while image files
    are scanned."""
    started = time.perf_counter()
    if config.data.dataset in ("directory", "csv"):
        report = _image_report(config, data_dir, progress)
    else:
        report = _array_report(config, data_dir, num_classes)
    if num_classes is not None and num_classes != len(report["classes"]):
        report["notes"].append(f"the model has {num_classes} outputs but the dataset {len(report['classes'])} "
                               "classes: training would refuse it")
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


# ---------------------------------------------------------------- image files


def scan_file(path: Path, shape: tuple, resize: str, max_pixels: int) -> FileFacts:
    """Decode `path` as training would; a readable file also gets its header's size and mode and its sha256."""
    from PIL import Image

    decoded = decode_file(path, shape, resize, max_pixels)
    if isinstance(decoded, str):
        return FileFacts(reason=decoded)
    try:
        content = path.read_bytes()  # once: hashed, and its header read (decoded, so not a bomb)
        with Image.open(io.BytesIO(content)) as image:  # lazy: reads the header only
            (width, height), mode = image.size, image.mode
    except (OSError, ValueError, SyntaxError) as error:  # changed or removed since it was decoded
        return FileFacts(reason=str(error).split("\n")[0][:160] or type(error).__name__)
    return FileFacts(width, height, mode, hashlib.sha256(content).hexdigest())


def scan(paths: list[Path], shape: tuple, resize: str, max_pixels: int, progress=None) -> list[FileFacts]:
    """scan_file of each path, in order, in workers() threads; progress(done, total) per chunk."""
    facts: list[FileFacts] = []
    if progress is not None and paths:
        progress(0, len(paths))  # the start: a rate shown is then of the whole scan
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            facts += pool.map(lambda p: scan_file(p, shape, resize, max_pixels), chunk)
            if progress is not None:
                progress(start + len(chunk), len(paths))
    return facts


def _decode_shape(input_shape: list[int]) -> tuple:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise DataError(f"image datasets need model.input_shape [H, W, 1 or 3] or [H, W], got {list(shape)}")
    return shape if len(shape) == 3 else (*shape, 1)


def _image_report(config: Config, data_dir, progress) -> dict:
    data, shape = config.data, _decode_shape(config.model.input_shape)
    files = list_files(data, data_dir)
    notes = _validation_notes(config, "val" in files.paths)
    if config.train.validation == "split" and "val" not in files.paths:
        files = hold_out_validation(files, config.train.validation_split, config.seed)
    notes = files.notes + notes
    keys = {part: fingerprint(files.paths[part], shape, data) for part in files.paths}
    entries = [(part, i, path, files.class_names[label]) for part in files.paths
               for i, (path, label) in enumerate(zip(files.paths[part], files.labels[part], strict=True))]
    refused = {(part, i): reason for part in keys for i, reason in keys[part][2].items()}  # missing, broken links
    scanned = iter(scan([path for part, i, path, _ in entries if (part, i) not in refused], shape, data.resize,
                        data.max_image_pixels, progress))
    facts = [FileFacts(reason=refused[part, i]) if (part, i) in refused else next(scanned)
             for part, i, _, _ in entries]
    good = [f for f in facts if f.reason is None]
    unreadable = [{"split": part, "path": str(path), "class": name, "reason": f.reason}
                  for (part, _, path, name), f in zip(entries, facts, strict=True) if f.reason is not None]
    members = [{"split": part, "path": str(path), "class": name} for part, _, path, name in entries]
    return {"dataset": data.dataset, "layout": LAYOUTS[files.layout], "source": str(files.source.absolute()),
            "files": [], "bytes": sum(key[1] for key in keys.values()), "input_shape": list(config.model.input_shape),
            "image_shape": None, "resize": data.resize, "split": files.split.model_dump() if files.split else None,
            "validation": config.train.validation, "classes": list(files.class_names),
            **_counts(files.class_names, {part: files.labels[part] for part in files.paths}),
            **_sizes(Counter((f.width, f.height) for f in good)),
            "modes": dict(Counter(MODES.get(f.mode, "other") for f in good).most_common()),
            "pillow_modes": dict(Counter(f.mode for f in good).most_common()),
            "unreadable": unreadable, "duplicates": _duplicates([f.sha256 for f in facts], members),
            "cache": _cache(keys, data.cache), "notes": notes}


def _validation_notes(config: Config, has_val: bool) -> list[str]:
    validation = config.train.validation
    if validation == "test":
        return ["validation: on the test set (train.validation: test)"]
    if has_val and validation == "none":
        return ["val: not used by the run (train.validation: none)"]
    return []


def _cache(keys: dict[str, tuple[str, int, dict]], enabled: bool) -> dict:
    """Each split's cache entry (the names folders.decoded gives them) and the size of the whole cache folder."""
    folder = cache_dir()
    splits = {}
    for part, (key, source_bytes, _) in keys.items():
        npy = cache_file(key)
        sizes = [_size(npy), _size(npy.with_suffix(".json"))]
        cached = None not in sizes  # the .json is written last: both there means a complete decode
        splits[part] = {"file": npy.name, "cached": cached, "bytes": sum(sizes) if cached else 0,
                        "source_bytes": source_bytes}
    listed = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return {"folder": str(folder), "enabled": enabled, "splits": splits, "folder_files": len(listed),
            "folder_bytes": sum(_size(p) or 0 for p in listed)}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


# ---------------------------------------------------------------- arrays


def _array_report(config: Config, data_dir, num_classes: int | None) -> dict:
    data = config.data
    if data.dataset == "synthetic":
        shape = tuple(int(d) for d in config.model.input_shape)
        raw = synthetic_splits(data, shape, num_classes, config.seed)
    elif data.dataset == "npz":
        raw = load_npz(data, data_dir)
    else:
        raw = load_builtin(data, data_dir)
    check_classes(data, raw, None)
    origin = {"train": ("train", np.arange(len(raw.x_train))), "test": ("test", np.arange(len(raw.x_test)))}
    notes = _validation_notes(config, False)
    if config.train.validation == "split":
        kept, val = held_out(len(raw.x_train), config.train.validation_split, config.seed)
        origin = {"train": ("train", kept), "val": ("train", val), "test": origin["test"]}
        notes.append(f"validation: {len(val):,} images held out of train (seed {config.seed})")
    arrays = {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}
    labels = {part: arrays[source][1][index] for part, (source, index) in origin.items()}
    members, digests = [], []  # hashing 70,000 small images takes a fraction of a second: no progress shown
    for part, (source, index) in origin.items():
        x, y = arrays[source]
        for i in index:
            members.append({"split": part, "index": int(i), "class": raw.class_names[int(y[i])]})
            digests.append(hashlib.sha256(np.ascontiguousarray(x[i]).tobytes()).hexdigest())
    total = len(digests)
    image = raw.x_train.shape[1:]
    channels = image[2] if len(image) == 3 else 1
    kind = {1: "gray", 3: "RGB", 4: "RGBA"}.get(channels, "other")
    files = [f["path"] for f in raw.identity.get("files", [])]
    return {"dataset": data.dataset, "layout": "arrays", "source": str(Path(files[0]).parent) if files else None,
            "files": files, "bytes": sum(f["bytes"] for f in raw.identity.get("files", [])),
            "input_shape": list(config.model.input_shape), "image_shape": [int(d) for d in image], "resize": None,
            "split": None, "validation": config.train.validation, "classes": list(raw.class_names),
            **_counts(raw.class_names, labels),
            **_sizes(Counter({(int(image[1]) if len(image) > 1 else 1, int(image[0])): total})),
            "modes": {kind: total}, "pillow_modes": {}, "unreadable": [],
            "duplicates": _duplicates(digests, members), "cache": None, "notes": notes}


# ---------------------------------------------------------------- shared


def _counts(names: list[str], labels: dict[str, np.ndarray]) -> dict:
    counts = {part: np.bincount(np.asarray(y, dtype=np.int64), minlength=len(names)) for part, y in labels.items()}
    table = {name: {part: int(c[i]) for part, c in counts.items()} for i, name in enumerate(names)}
    totals = {part: int(c.sum()) for part, c in counts.items()}
    return {"counts": table, "totals": totals, "images": sum(totals.values())}


def _sizes(found: Counter) -> dict:
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    shown = [{"width": w, "height": h, "images": n} for (w, h), n in ranked[:SIZES_SHOWN]]
    rest = ranked[SIZES_SHOWN:]
    return {"sizes": shown, "other_sizes": {"sizes": len(rest), "images": sum(n for _, n in rest)}}


def _duplicates(digests: list[str | None], members: list[dict]) -> dict:
    """Groups of identical images (same sha256) in more than one split, and the extra copies within each split."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest is not None:  # unreadable files are listed as such, not as duplicates (empty files are all alike)
            groups[digest].append(i)
    across, within = [], {m["split"]: 0 for m in members}
    for digest, group in groups.items():
        if len(group) < 2:
            continue
        per_split = Counter(members[i]["split"] for i in group)
        for part, n in per_split.items():
            within[part] += n - 1
        if len(per_split) > 1:
            listed = [members[i] for i in group]
            across.append({"sha256": digest, "classes_differ": len({m["class"] for m in listed}) > 1,
                           "files": listed})
    return {"groups_across_splits": len(across), "images_across_splits": sum(len(g["files"]) for g in across),
            "across_splits": across, "within_split": within}
