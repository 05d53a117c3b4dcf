"""Which image files make up a dataset, in which split and class: the three layouts of one's own images.

- `directory` with train/<class>/* and test/<class>/* (and optionally val/<class>/*);
- `directory` with root/<class>/* only: split per class by `data.split` (seeded, stratified);
- `csv`: a file of path,label rows (paths relative to the CSV's folder), with an optional split
  column (train, val or test); without one, split like a single folder.

Listing reads no image: decoding is decode.py's, and the decoded arrays are cached by folders.py.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnctl.data.arrays import counted, given_path, held_out
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig, DataSplit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
LAYOUTS = {"folders": "train/ and test/ folders", "classes": "one folder of class folders", "csv": "a CSV of path,label"}


@dataclass
class ImageFiles:
    """A dataset's image files: per split, paths and integer labels (indices into class_names)."""

    source: Path  # the image folder or the CSV file
    layout: str  # a key of LAYOUTS
    class_names: list[str]
    paths: dict[str, list[Path]]  # "train", "test" and maybe "val"
    labels: dict[str, np.ndarray]
    split: DataSplit | None = None  # how the files were split, when cnnctl split them
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """{class name: {split: images}}, every split listed for every class."""
        table = {name: dict.fromkeys(self.paths, 0) for name in self.class_names}
        for split, labels in self.labels.items():
            for label, n in zip(*np.unique(labels, return_counts=True), strict=True):
                table[self.class_names[label]][split] = int(n)
        return table

    def digest(self) -> str:
        """sha256 of which file is in which split with which label: the same listing, the same digest."""
        h = hashlib.sha256()
        for split in self.paths:
            for path, label in zip(self.paths[split], self.labels[split], strict=True):
                h.update(f"{split}\0{label}\0{_relative(path, self.source)}\n".encode())
        return h.hexdigest()


def _relative(path: Path, source: Path) -> str:
    base = source if source.is_dir() else source.parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _walk(folder: Path, names: list[str]) -> tuple[list[Path], list[int]]:
    """Image paths under folder/<class>/** (sorted) and their labels."""
    paths, labels = [], []
    for label, name in enumerate(names):
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames.sort()
            for filename in sorted(filenames):
                if is_image(filename):
                    paths.append(Path(dirpath, filename))
                    labels.append(label)
    return paths, labels


def list_files(data: DataConfig, data_dir=None) -> ImageFiles:
    """The files of a `directory` or `csv` dataset, split; DataError naming the folder or file when it is not one."""
    if data.dataset == "csv":
        return _from_csv(given_path(data, data_dir, Path.is_file, "a CSV file"), data.split)
    root = given_path(data, data_dir, Path.is_dir, "a folder")
    if (root / "train").is_dir():
        return _from_split_folders(root, data.split)
    names = _class_folders(root)
    if not names:
        raise DataError(f"{root}: neither train/ and test/ folders nor class folders (root/<class>/*)")
    paths, labels = _walk(root, names)
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return _split(ImageFiles(root, "classes", names, {}, {}), paths, labels, data.split or DataSplit())


def _from_split_folders(root: Path, split: DataSplit | None) -> ImageFiles:
    if split is not None:
        raise DataError(f"{root}: data.split is for one folder of class folders, but this one has train/ "
                        "(and test/) folders that already split it; remove data.split")
    if not (root / "test").is_dir():
        raise DataError(f"{root}: has train/ but no test/ folder (train/<class>/ and test/<class>/ are needed)")
    names = _class_folders(root / "train")
    files = ImageFiles(root, "folders", names, {}, {})
    for part in SPLITS:
        if part == "val" and not (root / part).is_dir():
            continue
        found = _class_folders(root / part)
        if part != "train" and found != names:
            raise DataError(f"{root / part}: class folders {found} differ from those of train/: {names}")
        paths, labels = _walk(root / part, names)
        if not paths:
            raise DataError(f"{root / part}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
        files.paths[part], files.labels[part] = paths, np.asarray(labels, dtype=np.int32)
    return files


def _from_csv(path: Path, split: DataSplit | None) -> ImageFiles:
    rows = _read_csv(path)
    has_split = any(part is not None for _, _, part in rows)
    names = sorted({label for _, label, _ in rows})
    index = {name: i for i, name in enumerate(names)}
    base = path.parent
    files = ImageFiles(path, "csv", names, {}, {})
    if not has_split:
        paths = [base / p for p, _, _ in rows]
        return _split(files, paths, [index[label] for _, label, _ in rows], split or DataSplit())
    if split is not None:
        raise DataError(f"{path}: data.split is for a CSV without a split column, but this one has one; "
                        "remove data.split")
    for part in SPLITS:
        chosen = [(base / p, index[label]) for p, label, s in rows if s == part]
        if chosen:
            files.paths[part] = [p for p, _ in chosen]
            files.labels[part] = np.asarray([label for _, label in chosen], dtype=np.int32)
    for part in ("train", "test"):
        if part not in files.paths:
            raise DataError(f"{path}: no rows with split {part!r} (the split column needs train and test rows)")
    return files


def _read_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """(relative path, label, split or None) per row of a CSV with a path,label[,split] header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lower() for h in next(reader, [])]
            if "path" not in header or "label" not in header:
                raise DataError(f"{path}:1: the header must name the columns path and label (and optionally "
                                f"split), got {','.join(header)[:100]!r}")
            at = {name: header.index(name) for name in ("path", "label", "split") if name in header}
            rows = []
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                rows.append(_csv_row(path, line, row, at, len(header)))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error.reason})") from None
    except (OSError, csv.Error) as error:
        raise DataError(f"{path}: cannot read it as CSV ({error})") from None
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


def _csv_row(path: Path, line: int, row: list[str], at: dict[str, int], columns: int) -> tuple[str, str, str | None]:
    if len(row) <= max(at.values()):  # (the header may have other columns before path, label or split)
        raise DataError(f"{path}:{line}: {len(row)} columns, the header has {columns}")
    image, label = row[at["path"]].strip(), row[at["label"]].strip()
    part = row[at["split"]].strip().lower() if "split" in at else None
    if not image or not label:
        raise DataError(f"{path}:{line}: empty {'path' if not image else 'label'}")
    if part is not None and part not in SPLITS:
        raise DataError(f"{path}:{line}: split must be train, val or test, got {part[:40]!r}")
    return image, label, part


def _split(files: ImageFiles, paths: list[Path], labels: list[int], split: DataSplit) -> ImageFiles:
    """Hold out split.test (and split.val) of each class, by a permutation seeded with split.seed."""
    labels = np.asarray(labels, dtype=np.int32)
    parts = {part: [] for part in SPLITS}
    rng = np.random.default_rng(split.seed)
    for label in range(len(files.class_names)):
        members = np.flatnonzero(labels == label)
        order = members[rng.permutation(len(members))]
        n_test, n_val = round(len(members) * split.test), round(len(members) * split.val)
        parts["test"].append(order[:n_test])
        parts["val"].append(order[n_test:n_test + n_val])
        parts["train"].append(order[n_test + n_val:])
    for part in SPLITS:
        chosen = np.sort(np.concatenate(parts[part]))
        if len(chosen) == 0 and (part != "val" or split.val > 0):
            raise DataError(f"{files.source}: data.split leaves the {part} split empty "
                            f"({counted(len(paths), 'image')} in {counted(len(files.class_names), 'class', 'classes')})")
        if len(chosen):
            files.paths[part] = [paths[i] for i in chosen]
            files.labels[part] = labels[chosen]
    files.split = split
    return files


def hold_out_validation(files: ImageFiles, fraction: float, seed: int) -> ImageFiles:
    """Validation taken from train/ (no val/ folder or split): the same seeded choice as for arrays."""
    train, val = held_out(len(files.paths["train"]), fraction, seed)
    paths, labels = files.paths["train"], files.labels["train"]
    files.paths = {"train": [paths[i] for i in train], "val": [paths[i] for i in val],
                   "test": files.paths["test"]}
    files.labels = {"train": labels[train], "val": labels[val], "test": files.labels["test"]}
    files.notes.append(f"validation: {counted(len(val), 'image')} held out of train/ (seed {seed})")
    return files


def merge_validation(files: ImageFiles) -> ImageFiles:
    """The val part of a split cnnctl made, put back into train (in listing order) for runs without validation."""
    pairs = sorted(zip(files.paths["train"] + files.paths["val"],
                       np.concatenate([files.labels["train"], files.labels["val"]]).tolist(), strict=True),
                   key=lambda pair: (pair[1], str(pair[0])))
    files.paths = {"train": [p for p, _ in pairs], "test": files.paths["test"]}
    files.labels = {"train": np.asarray([label for _, label in pairs], dtype=np.int32), "test": files.labels["test"]}
    files.notes.append(f"no validation: data.split's val part ({counted(len(pairs), 'image')} with it) is trained on")
    return files
