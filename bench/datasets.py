"""The benchmark's data, without TensorFlow: an MNIST slice as .npz, CIFAR-10 JPEG folders (a subset)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np


def mnist_slice(source: Path, out: Path, train: int | None, test: int | None) -> tuple[int, int]:
    """The first `train` / `test` images of mnist.npz, written in the same format (None: all)."""
    with np.load(source, allow_pickle=False) as mnist:
        arrays = {k: mnist[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    arrays = {k: v[:train] if k.endswith("train") else v[:test] for k, v in arrays.items()}
    with open(out, "wb") as handle:
        np.savez(handle, **arrays)
    return len(arrays["x_train"]), len(arrays["x_test"])


def cifar_folders(wanted: Path, tarball: Path, scratch: Path) -> Path:
    """`wanted` if it holds train/ and test/, else the tarball unpacked under `scratch`."""
    if (wanted / "train").is_dir() and (wanted / "test").is_dir():
        return wanted
    if not tarball.is_file():
        raise FileNotFoundError(f"neither {wanted} nor {tarball} found (see --cifar-root, --cifar-tar)")
    with tarfile.open(tarball) as archive:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(scratch, **kwargs)
    found = [p.parent for p in scratch.rglob("train") if (p.parent / "test").is_dir()]
    if not found:
        raise ValueError(f"{tarball} has no train/ and test/ folders")
    return found[0]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _take(split: Path, out: Path, count: int) -> int:
    """Symlink `count` images of split/<class>/ into out/<class>/, as evenly over the classes as possible."""
    classes = sorted(d for d in split.iterdir() if d.is_dir())
    taken = 0
    for index, folder in enumerate(classes):
        share = count // len(classes) + (1 if index < count % len(classes) else 0)
        (out / folder.name).mkdir(parents=True)
        for image in _images(folder)[:share]:
            os.symlink(image.resolve(), out / folder.name / image.name)
            taken += 1
    return taken


def cifar_subset(root: Path, out: Path, train: int | None, test: int | None) -> tuple[Path, int, int]:
    """An image folder with `train` / `test` images of root (symlinks), or root itself for all of them."""
    counts = {split: sum(len(_images(d)) for d in (root / split).iterdir() if d.is_dir()) for split in ("train", "test")}
    if (train is None or train >= counts["train"]) and (test is None or test >= counts["test"]):
        return root, counts["train"], counts["test"]
    got_train = _take(root / "train", out / "train", min(train or counts["train"], counts["train"]))
    got_test = _take(root / "test", out / "test", min(test or counts["test"], counts["test"]))
    return out, got_train, got_test
