"""cnnctl.data.images: which files make up an image dataset, in which split and class, for the three layouts
(train/ and test/ folders, one folder of class folders split per class, a CSV). Listing reads no image, so
most files here are empty: only their names matter."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MINIMAL_YAML

from cnnctl.data import images
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig, DataSplit


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def class_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/<i>.png for each class and count."""
    for name, n in counts.items():
        touch(root, *(f"{name}/{i:03d}.png" for i in range(n)))
    return root


def listing(root: Path, dataset="directory", **config) -> images.ImageFiles:
    return images.list_files(DataConfig(dataset=dataset, root=str(root), **config))


def names(files: images.ImageFiles, part: str) -> list[str]:
    return [images._relative(p, files.source) for p in files.paths[part]]


# ---------------------------------------------------------------- train/ and test/ folders


def test_train_and_test_folders(tmp_path):
    touch(tmp_path, "train/cat/a.png", "train/cat/b.JPG", "train/cat/deep/c.jpeg", "train/dog/d.bmp",
          "test/cat/e.gif", "test/dog/f.webp", "train/dog/notes.txt", "train/dog/.hidden.png", "train/.cache/g.png")
    files = listing(tmp_path)
    assert files.layout == "folders" and files.class_names == ["cat", "dog"] and files.split is None
    assert list(files.paths) == ["train", "test"]
    assert names(files, "train") == ["train/cat/a.png", "train/cat/b.JPG", "train/cat/deep/c.jpeg", "train/dog/d.bmp"]
    assert files.labels["train"].tolist() == [0, 0, 0, 1] and files.labels["train"].dtype == np.int32
    assert names(files, "test") == ["test/cat/e.gif", "test/dog/f.webp"] and files.labels["test"].tolist() == [0, 1]
    assert files.counts() == {"cat": {"train": 3, "test": 1}, "dog": {"train": 1, "test": 1}}


def test_a_val_folder_is_the_third_split(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "val/a/3.png", "val/b/4.png", "test/a/5.png", "test/b/6.png")
    files = listing(tmp_path)
    assert list(files.paths) == ["train", "val", "test"] and names(files, "val") == ["val/a/3.png", "val/b/4.png"]
    assert files.counts()["a"] == {"train": 1, "val": 1, "test": 1}


def test_a_class_may_have_no_test_images_but_the_class_folders_must_agree(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "test/a/3.png")
    (tmp_path / "test" / "b").mkdir()
    assert listing(tmp_path).counts()["b"] == {"train": 1, "test": 0}
    touch(tmp_path, "test/c/4.png")
    with pytest.raises(DataError) as info:
        listing(tmp_path)
    assert str(info.value) == f"{tmp_path / 'test'}: class folders ['a', 'b', 'c'] differ from those of train/: ['a', 'b']"
    shutil.rmtree(tmp_path / "test" / "c")
    touch(tmp_path, "val/a/5.png")
    with pytest.raises(DataError, match=r"val: class folders \['a'\] differ"):
        listing(tmp_path)


@pytest.mark.parametrize(("files", "message"), [
    (["train/a/1.png", "test/a/2.png"], None),
    (["train/a/1.png"], "has train/ but no test/ folder"),
    (["train/a/1.png", "test/a/notes.txt"], "test: no images (.png, .jpg"),
    (["train/a/1.txt", "test/a/2.png"], "train: no images (.png, .jpg"),
    (["train/a/1.png", "test/a/2.png", "val/a/"], "val: no images"),
    (["notes.txt"], "neither train/ and test/ folders nor class folders"),
    (["a/notes.txt", "b/x.csv"], "no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff) in its class folders"),
])
def test_empty_or_incomplete_folders_are_refused(tmp_path, files, message):
    for name in files:
        if name.endswith("/"):
            (tmp_path / name).mkdir(parents=True)
        else:
            touch(tmp_path, name)
    if message is None:
        assert listing(tmp_path).class_names == ["a"]
        return
    with pytest.raises(DataError, match=re.escape(message)):
        listing(tmp_path)


def test_data_split_is_refused_for_a_folder_already_split(tmp_path):
    touch(tmp_path, "train/a/1.png", "test/a/2.png")
    with pytest.raises(DataError, match="data.split is for one folder of class folders.*remove data.split"):
        listing(tmp_path, split={"test": 0.2})


def test_a_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=f"directory: {tmp_path / 'nowhere'}: not a folder"):
        listing(tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs data.root"):
        images.list_files(DataConfig(dataset="directory"))
    data_dir = class_folder(tmp_path / "here", {"a": 10})
    assert images.list_files(DataConfig(dataset="directory", root="elsewhere"), data_dir).source == data_dir


# ---------------------------------------------------------------- one folder of class folders, split per class


def test_each_class_keeps_its_proportion(tmp_path):
    root = class_folder(tmp_path, {"a": 100, "b": 20})
    files = listing(root, split={"val": 0.2, "test": 0.1, "seed": 3})
    assert files.layout == "classes" and files.split == DataSplit(val=0.2, test=0.1, seed=3)
    assert files.counts() == {"a": {"test": 10, "val": 20, "train": 70}, "b": {"test": 2, "val": 4, "train": 14}}
    every = [p for part in files.paths for p in files.paths[part]]
    assert len(set(every)) == 120  # each image in exactly one split
    for part in files.paths:  # in listing order, labels matching the folders
        assert files.paths[part] == sorted(files.paths[part])
        assert [p.parent.name for p in files.paths[part]] == [files.class_names[i] for i in files.labels[part]]


def test_the_default_split_is_val_and_test_a_tenth(tmp_path):
    files = listing(class_folder(tmp_path, {"a": 30, "b": 10}))
    assert files.split == DataSplit(val=0.1, test=0.1, seed=0)
    assert files.counts() == {"a": {"test": 3, "val": 3, "train": 24}, "b": {"test": 1, "val": 1, "train": 8}}


def test_the_split_is_seeded(tmp_path):
    root = class_folder(tmp_path, {"a": 40, "b": 40})
    first, again = listing(root, split={"test": 0.25}), listing(root, split={"test": 0.25})
    other = listing(root, split={"test": 0.25, "seed": 1})
    assert first.paths == again.paths and first.digest() == again.digest()
    assert first.paths["test"] != other.paths["test"] and first.digest() != other.digest()
    assert first.counts() == other.counts()


def test_without_val_there_is_no_val_split(tmp_path):
    files = listing(class_folder(tmp_path, {"a": 10, "b": 10}), split={"val": 0, "test": 0.2})
    assert list(files.paths) == ["train", "test"] and files.counts()["a"] == {"train": 8, "test": 2}


def test_a_split_left_empty_is_refused(tmp_path):
    root = class_folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"data.split leaves the test split empty \(4 images in 2 classes\)"):
        listing(root, split={"val": 0, "test": 0.1})
    with pytest.raises(DataError, match="leaves the val split empty"):
        listing(root, split={"val": 0.1, "test": 0.5})


def test_split_fractions_that_leave_no_training_images_are_refused_by_the_schema():
    assert DataSplit(val=0.45, test=0.5).test == 0.5
    with pytest.raises(ValueError, match=r"val 0.5 \+ test 0.5 leaves no training images"):
        DataSplit(val=0.5, test=0.5)
    with pytest.raises(ValueError):
        DataSplit(val=1.0, test=0)


def test_cnnctl_config_locates_an_impossible_split(cli, write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("  dataset: synthetic\n", "  dataset: directory\n  root: x\n"
                                           "  split: {val: 0.6, test: 0.4}\n"))
    result = cli("config", path)
    assert result.exit_code == 2
    assert result.output == f"error: {path}:5:10: data.split: val 0.6 + test 0.4 leaves no training images " \
                            "(their sum must be < 1)\n"


def test_the_digest_is_of_the_listing_not_of_where_it_is(tmp_path):
    root = class_folder(tmp_path / "one", {"a": 10, "b": 10})
    digest = listing(root).digest()
    shutil.copytree(root, tmp_path / "two")
    assert listing(tmp_path / "two").digest() == digest
    (tmp_path / "two" / "b" / "000.png").rename(tmp_path / "two" / "a" / "999.png")  # relabelled
    assert listing(tmp_path / "two").digest() != digest


def test_hold_out_validation_takes_it_from_train(tmp_path):
    touch(tmp_path, *(f"train/{c}/{i}.png" for c in "ab" for i in range(10)), "test/a/x.png", "test/b/y.png")
    files = images.hold_out_validation(listing(tmp_path), 0.2, seed=5)
    assert [len(files.paths[p]) for p in ("train", "val", "test")] == [16, 4, 2]
    assert not set(files.paths["train"]) & set(files.paths["val"])
    assert files.notes == ["validation: 4 images held out of train/ (seed 5)"]
    again = images.hold_out_validation(listing(tmp_path), 0.2, seed=5)
    assert again.paths == files.paths


def test_without_validation_the_val_part_of_a_split_is_trained_on(tmp_path):
    files = listing(class_folder(tmp_path, {"a": 20, "b": 10}))
    val, test = list(files.paths["val"]), list(files.paths["test"])
    merged = images.merge_validation(files)
    assert set(merged.paths) == {"train", "test"} and merged.paths["test"] == test
    assert len(merged.paths["train"]) == 27 and set(val) <= set(merged.paths["train"])
    assert merged.paths["train"] == sorted(merged.paths["train"], key=lambda p: (p.parent.name, str(p)))
    assert list(merged.labels["train"]) == [0] * 18 + [1] * 9
    assert merged.notes == ["no validation: data.split's val part (27 images with it) is trained on"]


# ---------------------------------------------------------------- a CSV of path,label[,split]


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_without_a_split_column_is_split_per_class(tmp_path):
    rows = "".join(f"img/{i}.png,{'cat' if i < 20 else 'dog'}\n" for i in range(30))
    csv = write_csv(tmp_path / "data" / "labels.csv", "path,label\n" + rows)
    files = listing(csv, dataset="csv", split={"val": 0.1, "test": 0.2, "seed": 2})
    assert files.layout == "csv" and files.source == csv and files.class_names == ["cat", "dog"]
    assert files.counts() == {"cat": {"test": 4, "val": 2, "train": 14}, "dog": {"test": 2, "val": 1, "train": 7}}
    assert all(p.parent == tmp_path / "data" / "img" for part in files.paths for p in files.paths[part])
    assert listing(csv, dataset="csv", split={"val": 0.1, "test": 0.2, "seed": 2}).digest() == files.digest()
    assert files.split == DataSplit(val=0.1, test=0.2, seed=2)
    assert listing(csv, dataset="csv").split == DataSplit()


def test_csv_with_a_split_column(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "\ufeffLabel, Split ,Path,notes\n"  # any order, BOM, case, spaces
                    "b,train,x/1.png,\n a , TRAIN ,/abs/2.png,hi\n\na,test,x/3.png,\nb,val,x/4.png,\n"
                    ",,,\nb,test,x/5.png,\n")
    files = listing(csv, dataset="csv")
    assert files.class_names == ["a", "b"] and files.split is None and list(files.paths) == ["train", "val", "test"]
    assert files.paths["train"] == [tmp_path / "x" / "1.png", Path("/abs/2.png")]
    assert files.labels["train"].tolist() == [1, 0] and files.labels["test"].tolist() == [0, 1]
    assert files.counts() == {"a": {"train": 1, "val": 0, "test": 1}, "b": {"train": 1, "val": 1, "test": 1}}
    with pytest.raises(DataError, match="data.split is for a CSV without a split column, but this one has one"):
        listing(csv, dataset="csv", split={"test": 0.2})


@pytest.mark.parametrize(("text", "where", "message"), [
    ("file,class\nx.png,a\n", 1, "the header must name the columns path and label (and optionally split), got 'file,class'"),
    ("", 1, "the header must name the columns path and label (and optionally split), got ''"),
    ("path,label,split\nx.png,a,train\ny.png,a,holdout\n", 3, "split must be train, val or test, got 'holdout'"),
    ("path,label,split\nx.png,a,\n", 2, "split must be train, val or test, got ''"),
    ("path,label\nx.png,a\n\n ,b\n", 4, "empty path"),
    ("path,label\nx.png,\n", 2, "empty label"),
    ("path,label,split\nx.png,a\n", 2, "2 columns, the header has 3"),
    ("notes,path,label,split\nhi,x.png,a\n", 2, "3 columns, the header has 4"),  # split would be past the row
])
def test_csv_errors_are_located_at_the_line(tmp_path, text, where, message):
    csv = write_csv(tmp_path / "labels.csv", text)
    with pytest.raises(DataError) as info:
        listing(csv, dataset="csv")
    assert str(info.value) == f"{csv}:{where}: {message}"


@pytest.mark.parametrize(("content", "message"), [
    ("path,label\n\n\n", "no rows after the header"),
    ("path,label,split\nx.png,a,train\ny.png,a,val\n", "no rows with split 'test' (the split column needs train and test rows)"),
    ("path,label,split\nx.png,a,test\n", "no rows with split 'train'"),
    (b"path,label\nx.png,\xff\xfe\n", "not a UTF-8 text file"),
])
def test_csv_without_usable_rows_is_refused(tmp_path, content, message):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as info:
        listing(csv, dataset="csv")
    assert str(info.value).startswith(f"{csv}: {message}")


def test_csv_root_must_be_a_file(tmp_path):
    with pytest.raises(DataError, match=f"csv: {tmp_path}: not a CSV file"):
        listing(tmp_path, dataset="csv")
