"""cnnctl.data.inspection and `cnnctl data`: image folders (three layouts) and arrays made here, each
finding asserted: counts per split, sizes, modes, unreadable files, duplicates across splits, the cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import REPO, SHARED_DATASETS, load, stderr_of, tiny_config, write_config, write_mnist

from cnnctl import data as data_module
from cnnctl.config import load_config
from cnnctl.data.inspection import inspect_dataset, scan
from cnnctl.schema import DataConfig

pytestmark = pytest.mark.usefixtures("isolated")
Image = pytest.importorskip("PIL.Image")


def write_image(path, mode="RGB", size=(8, 8), value=100, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, size, color).save(path, fmt)
    return path


def write_folders(root):
    """train/ and test/ with every finding: modes, another size, an empty and a corrupt file, duplicates."""
    write_image(root / "train" / "cat" / "a.png", value=10)
    shutil.copy(root / "train" / "cat" / "a.png", root / "train" / "cat" / "a-copy.png")  # within train
    write_image(root / "train" / "cat" / "b.png", "RGBA", value=20)
    write_image(root / "train" / "cat" / "c.png", "P", value=3)
    write_image(root / "train" / "dog" / "d.jpg", value=200)
    write_image(root / "train" / "dog" / "e.png", "L", value=210)
    write_image(root / "train" / "dog" / "f.png", size=(16, 12), value=220)
    (root / "train" / "dog" / "empty.png").write_bytes(b"")
    (root / "train" / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    write_image(root / "test" / "cat" / "g.png", value=30)
    write_image(root / "test" / "dog" / "h.jpg", value=60)
    shutil.copy(root / "train" / "cat" / "a.png", root / "test" / "dog" / "same-as-a.png")  # across, other class
    return root


def config_for(tmp_path, data: dict, input_shape=(8, 8, 3), classes=2, **changes):
    return load_config(write_config(tmp_path / "config.yaml", tiny_config(input_shape=input_shape, classes=classes,
                                                                          data=data, **changes)))


def inspect(tmp_path, data: dict, **kwargs):
    config = config_for(tmp_path, data, **kwargs)
    return inspect_dataset(config, num_classes=kwargs.get("classes", 2))


# ---------------------------------------------------------------- image folders


def test_split_folders_every_finding(tmp_path):
    root = write_folders(tmp_path / "imgs")
    calls = []
    report = inspect_dataset(config_for(tmp_path, {"dataset": "directory", "root": str(root)}), num_classes=2,
                             progress=lambda done, total: calls.append((done, total)))
    assert report["layout"] == "train/ and test/ folders" and report["source"] == str(root.absolute())
    assert report["classes"] == ["cat", "dog"]
    assert report["counts"] == {"cat": {"train": 5, "test": 1}, "dog": {"train": 4, "test": 2}}
    assert report["totals"] == {"train": 9, "test": 3} and report["images"] == 12
    assert report["sizes"] == [{"width": 8, "height": 8, "images": 9}, {"width": 16, "height": 12, "images": 1}]
    assert report["other_sizes"] == {"sizes": 0, "images": 0}
    assert report["modes"] == {"RGB": 7, "RGBA": 1, "palette": 1, "gray": 1}
    assert report["pillow_modes"] == {"RGB": 7, "RGBA": 1, "P": 1, "L": 1}
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in report["unreadable"]}
    assert reasons == {"corrupt.jpg": "not an image Pillow can read", "empty.png": "empty file"}
    assert {entry["split"] for entry in report["unreadable"]} == {"train"}
    duplicates = report["duplicates"]
    assert duplicates["groups_across_splits"] == 1 and duplicates["images_across_splits"] == 3
    (group,) = duplicates["across_splits"]
    assert sorted((m["split"], m["path"].rsplit("/", 1)[-1]) for m in group["files"]) == [
        ("test", "same-as-a.png"), ("train", "a-copy.png"), ("train", "a.png")]
    assert group["classes_differ"] and len(group["sha256"]) == 64
    assert duplicates["within_split"] == {"train": 1, "test": 0}
    assert calls[-1] == (12, 12)
    json.dumps(report)  # JSON-able as it is


def test_unreadable_means_what_training_refuses(tmp_path):
    """The same files the training decode refuses, with the same reasons; a decompression bomb too."""
    from cnnctl.errors import DataError

    root = write_folders(tmp_path / "imgs")
    report = inspect(tmp_path, {"dataset": "directory", "root": str(root), "max_image_pixels": 100})
    bombs = [e for e in report["unreadable"] if e["path"].endswith("f.png")]
    assert len(bombs) == 1 and "16x12 pixels, over data.max_image_pixels (100)" in bombs[0]["reason"]
    assert len(report["unreadable"]) == 3 and report["sizes"] == [{"width": 8, "height": 8, "images": 9}]
    with pytest.raises(DataError) as refused:
        load("directory", input_shape=(8, 8, 3), root=str(root), max_image_pixels=100)
    assert "3 images cannot be read" in str(refused.value)
    for entry in report["unreadable"]:
        assert f"{entry['path']}: {entry['reason']}" in str(refused.value)


def test_the_cache_entries_are_the_ones_training_writes(tmp_path):
    root = write_folders(tmp_path / "imgs")
    data = {"dataset": "directory", "root": str(root), "skip_bad_files": True}
    before = inspect(tmp_path, data)["cache"]
    assert before["folder"] == str(tmp_path / "cache") and before["enabled"]
    assert {part: entry["cached"] for part, entry in before["splits"].items()} == {"train": False, "test": False}
    assert before["folder_files"] == 0 and before["folder_bytes"] == 0
    load("directory", input_shape=(8, 8, 3), root=str(root), skip_bad_files=True)  # decodes into the cache
    after = inspect(tmp_path, data)["cache"]
    assert {part: entry["cached"] for part, entry in after["splits"].items()} == {"train": True, "test": True}
    assert after["splits"]["train"]["file"] == before["splits"]["train"]["file"]
    assert after["splits"]["train"]["bytes"] > 7 * 8 * 8 * 3  # 7 readable images of 8x8x3, a header, a .json
    assert after["folder_bytes"] >= sum(entry["bytes"] for entry in after["splits"].values())
    other_shape = inspect(tmp_path, data, input_shape=(8, 8, 1))["cache"]  # another key: not cached
    assert not any(entry["cached"] for entry in other_shape["splits"].values())


def test_one_folder_of_classes_is_split_as_training_splits_it(tmp_path):
    for name, values in (("cat", range(10, 18)), ("dog", range(100, 108))):
        for value in values:
            write_image(tmp_path / "imgs" / name / f"{value}.png", value=value)
    data = {"dataset": "directory", "root": str(tmp_path / "imgs"), "split": {"val": 0.25, "test": 0.25, "seed": 3}}
    report = inspect(tmp_path, data, train={"validation": "split"})
    assert report["layout"] == "one folder of class folders" and report["split"] == {"val": 0.25, "test": 0.25,
                                                                                      "seed": 3}
    assert report["counts"] == {"cat": {"train": 4, "val": 2, "test": 2}, "dog": {"train": 4, "val": 2, "test": 2}}
    assert report["duplicates"]["groups_across_splits"] == 0 and report["unreadable"] == []
    splits = data_module.load_splits(DataConfig(**data), input_shape=[8, 8, 3], num_classes=2, validation="split",
                                     validation_split=0.2, seed=0)
    for part, y in (("train", splits.y_train), ("val", splits.y_val), ("test", splits.y_test)):
        assert report["totals"][part] == len(y)
    assert report["modes"] == {"RGB": 16}


def test_a_held_out_validation_is_counted_and_an_unused_val_noted(tmp_path):
    root = write_folders(tmp_path / "imgs")
    held = inspect(tmp_path, {"dataset": "directory", "root": str(root)},
                   train={"validation": "split", "validation_split": 0.25})
    assert held["totals"] == {"train": 6, "val": 3, "test": 3}  # Keras' count: 9 - int(9 * 0.75)
    assert any("held out of train/" in note for note in held["notes"])
    write_image(root / "val" / "cat" / "v.png", value=77)
    write_image(root / "val" / "dog" / "w.png", value=78)
    unused = inspect(tmp_path, {"dataset": "directory", "root": str(root)})
    assert unused["totals"] == {"train": 9, "val": 2, "test": 3}
    assert "val: not used by the run (train.validation: none)" in unused["notes"]


def test_csv_with_a_split_column_and_a_missing_file(tmp_path):
    images = tmp_path / "csv"
    write_image(images / "x1.png", value=1)
    write_image(images / "x2.png", "L", value=2)
    write_image(images / "x3.png", value=3)
    shutil.copy(images / "x1.png", images / "x4.png")
    (images / "labels.csv").write_text("path,label,split\nx1.png,ant,train\nx2.png,bee,train\n"
                                       "x3.png,ant,test\nx4.png,bee,test\ngone.png,ant,train\n")
    report = inspect(tmp_path, {"dataset": "csv", "root": str(images / "labels.csv")})
    assert report["layout"] == "a CSV of path,label" and report["classes"] == ["ant", "bee"]
    assert report["counts"] == {"ant": {"train": 2, "test": 1}, "bee": {"train": 1, "test": 1}}
    (missing,) = report["unreadable"]
    assert missing["path"].endswith("gone.png") and "No such file" in missing["reason"]
    assert report["duplicates"]["groups_across_splits"] == 1 and report["modes"] == {"RGB": 3, "gray": 1}


def test_many_sizes_are_summed_up_beyond_the_top_ones(tmp_path):
    for i in range(14):
        write_image(tmp_path / "imgs" / "train" / "a" / f"{i}.png", size=(8 + i, 8), value=i)
        write_image(tmp_path / "imgs" / "test" / "a" / f"{i}.png", size=(8, 8), value=100 + i)
    report = inspect(tmp_path, {"dataset": "directory", "root": str(tmp_path / "imgs")}, classes=2)
    assert report["sizes"][0] == {"width": 8, "height": 8, "images": 15} and len(report["sizes"]) == 10
    assert report["other_sizes"] == {"sizes": 4, "images": 4}
    assert "the model has 2 outputs but the dataset 1 classes: training would refuse it" in report["notes"]


def test_scan_runs_in_order_and_reports_progress(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", value=i) for i in range(5)]
    calls = []
    facts = scan(paths, (8, 8, 3), "stretch", 10**6, lambda done, total: calls.append((done, total)))
    assert [f.sha256 for f in facts] == [f.sha256 for f in scan(paths, (8, 8, 3), "stretch", 10**6)]
    assert len({f.sha256 for f in facts}) == 5 and calls == [(0, 5), (5, 5)] and all(f.mode == "RGB" for f in facts)


# ---------------------------------------------------------------- arrays


def test_npz_duplicates_across_train_and_test(tmp_path):
    path = write_mnist(tmp_path / "d.npz", n=5)  # every image the same: one group across train and test
    report = inspect(tmp_path, {"dataset": "npz", "root": str(path)}, input_shape=(28, 28, 1), classes=5,
                     train={"validation": "split", "validation_split": 0.4})
    assert report["layout"] == "arrays" and report["files"] == [str(path.absolute())] and report["cache"] is None
    assert report["totals"] == {"train": 3, "val": 2, "test": 2} and report["classes"] == ["0", "1", "2", "3", "4"]
    assert report["image_shape"] == [28, 28] and report["sizes"] == [{"width": 28, "height": 28, "images": 7}]
    assert report["modes"] == {"gray": 7} and report["unreadable"] == []
    (group,) = report["duplicates"]["across_splits"]
    assert len(group["files"]) == 7 and {m["split"] for m in group["files"]} == {"train", "val", "test"}
    assert report["duplicates"]["within_split"] == {"train": 2, "val": 1, "test": 1}
    assert {m["index"] for m in group["files"] if m["split"] != "test"} == set(range(5))  # indices into x_train


def test_synthetic_has_no_duplicates(tmp_path):
    report = inspect(tmp_path, {"dataset": "synthetic", "synthetic": {"train_examples": 40, "test_examples": 20}},
                     classes=3)
    assert report["source"] is None and report["totals"] == {"train": 40, "test": 20}
    assert report["modes"] == {"RGB": 60} and report["duplicates"]["groups_across_splits"] == 0
    assert sum(row["train"] for row in report["counts"].values()) == 40


# ---------------------------------------------------------------- the command


def test_cnnctl_data_table_and_json_agree(cli, tmp_path):
    root = write_folders(tmp_path / "imgs")
    path = write_config(tmp_path / "c.yaml", tiny_config(input_shape=(8, 8, 3), classes=2,
                                                         data={"dataset": "directory", "root": str(root)}))
    shown = cli("data", path)
    assert shown.exit_code == 0, shown.output  # bad files are findings, not failures
    table = shown.stdout
    assert "cat" in table and "dog" in table and "12 images" in table
    assert "empty.png: empty file" in table and "corrupt.jpg: not an image Pillow can read" in table
    assert "1 group of identical images in different splits (3 images)" in table and "(classes differ)" in table
    assert "not cached" in table and "modes      RGB 7, RGBA 1, palette 1, gray 1" in table
    as_json = cli("data", path, "--json", "--set", "model.input_shape=[8,8,3]")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["counts"] == {"cat": {"train": 5, "test": 1}, "dog": {"train": 4, "test": 2}}
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in table.splitlines() if line.count("│") == 5}
    assert rows["cat"] == ["5", "1", "6"] and rows["dog"] == ["4", "2", "6"] and rows["total"] == ["9", "3", "12"]


def test_cnnctl_data_missing_folder_exits_2_with_one_line(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(data={"dataset": "directory",
                                                               "root": str(tmp_path / "missing")}))
    result = cli("data", path)
    assert result.exit_code == 2 and result.stdout == ""
    lines = [line for line in stderr_of(result).splitlines() if line.strip()]
    assert lines == [f"error: directory: {tmp_path / 'missing'}: not a folder"]


@pytest.mark.slow
def test_cnnctl_data_on_an_image_folder_does_not_start_tensorflow(tmp_path):
    root = write_folders(tmp_path / "imgs")
    path = write_config(tmp_path / "c.yaml", tiny_config(input_shape=(8, 8, 3), classes=2,
                                                         data={"dataset": "directory", "root": str(root)}))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnnctl", "data", str(path), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "cnnctl.data.inspection" in imported  # the probe works
    assert not {name for name in imported if name.split(".")[0] in {"tensorflow", "keras"}}
    assert json.loads(result.stdout)["images"] == 12


@pytest.mark.slow
def test_the_real_cifar10_jpeg_folder(tmp_path):
    tarball = SHARED_DATASETS / "cifar10-jpg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"{tarball} is not here")
    with tarfile.open(tarball, "r:gz") as tar:  # 60,000 small files: about a second
        tar.extractall(tmp_path, filter="data")
    report = inspect(tmp_path, {"dataset": "directory", "root": str(tmp_path / "cifar10-jpg")}, input_shape=(32, 32, 3),
                     classes=10)
    assert len(report["classes"]) == 10 and report["totals"] == {"train": 50_000, "test": 10_000}
    assert set(np.unique([row["train"] for row in report["counts"].values()])) == {5_000}
    assert report["sizes"] == [{"width": 32, "height": 32, "images": 60_000}] and report["modes"] == {"RGB": 60_000}
    assert report["unreadable"] == [] and report["duplicates"]["groups_across_splits"] == 0
