"""cnnctl.data.folders: image datasets (train/ and test/ folders, one folder of class folders, a CSV) made
here with Pillow, decoded to the input shape into a memory-mapped .npy cache per split; unreadable files
listed all at once, or skipped; and a run on such a folder from the command line."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import load, tiny_config, write_config, write_image

from cnnctl import rundata
from cnnctl.data import decode, folders
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

pytestmark = pytest.mark.usefixtures("isolated")


def write_folder(root: Path, splits=("train", "test")) -> Path:
    for split in splits:
        write_image(root / split / "cat" / "a.png", "RGB", value=10)
        write_image(root / split / "cat" / "b.png", "RGBA", size=(16, 12), value=20)  # resized, alpha dropped
        write_image(root / split / "cat" / "c.bmp", "RGB", value=30)
        write_image(root / split / "dog" / "d.jpg", "RGB", value=200)
        write_image(root / split / "dog" / "e.png", "L", value=210)  # grayscale converted to RGB
        write_image(root / split / "dog" / "f.gif", "L", value=220)
        (root / split / "dog" / "notes.txt").write_text("not an image")
    return root


def class_folder(root: Path, counts: dict[str, int], size=(4, 4)) -> Path:
    """root/<class>/<i>.png, image i of class k all of the value 2 * i + 100 * k (they stay apart)."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"{i:03d}.png", "L", size, value=2 * i + 100 * k)
    return root


def cache_files(tmp_path: Path, pattern="*") -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.glob(pattern)) if cache.exists() else []


def load_split(root: Path, split: dict | None, *, dataset="directory", input_shape=(4, 4, 1), validation="none",
               seed=0, progress=None, **config):
    """data.load_splits of an image dataset with a data.split (conftest's `load` takes split as validation_split)."""
    from cnnctl import data

    config = DataConfig(dataset=dataset, root=str(root), split=split, **config)
    return data.load_splits(config, input_shape=input_shape, num_classes=None, validation=validation,
                            validation_split=0.25, seed=seed, progress=progress)


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")


# ---------------------------------------------------------------- the three layouts, decoded


def test_image_folder_classes_resize_and_channels(tmp_path):
    write_folder(tmp_path / "imgs")
    rgb = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), num_classes=2, validation="test")
    assert rgb.class_names == ["cat", "dog"] and rgb.x_train.shape == (6, 8, 8, 3) and rgb.x_train.dtype == np.uint8
    assert list(rgb.y_train) == [0, 0, 0, 1, 1, 1] and rgb.x_test.shape == (6, 8, 8, 3)
    assert np.all(rgb.x_train[0] == 10) and np.all(rgb.x_train[1] == 20) and np.all(rgb.x_train[4] == 210)
    assert abs(int(rgb.x_train[3].mean()) - 200) <= 2  # JPEG is lossy
    assert all(isinstance(x, np.memmap) for x in (rgb.x_train, rgb.x_val, rgb.x_test))
    gray = load("directory", input_shape=(8, 8, 1), data_dir=tmp_path / "imgs")
    assert gray.x_train.shape == (6, 8, 8, 1) and np.all(gray.x_train[0] == 10) and np.all(gray.x_train[5] == 220)
    flat = load("directory", input_shape=(4, 4), data_dir=tmp_path / "imgs")
    assert flat.x_test.shape == (6, 4, 4) and isinstance(flat.x_test, np.memmap)
    identity = rgb.identity
    assert identity["dataset"] == "directory" and identity["files"][0]["images"] == 12
    assert identity["files"][0]["path"] == str(tmp_path / "imgs") and identity["layout"] == "train/ and test/ folders"
    assert identity["split"] is None and identity["resize"] == "stretch" and identity["skipped"] == 0
    assert identity["classes"] == {"cat": {"train": 3, "test": 3}, "dog": {"train": 3, "test": 3}}


def test_image_folder_val_subfolder_is_the_split(tmp_path):
    write_folder(tmp_path / "imgs", splits=("train", "test", "val"))
    s = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), validation="split")
    assert len(s.x_train) == 6 and len(s.x_val) == 6 and list(s.y_val) == [0, 0, 0, 1, 1, 1]
    assert s.identity["classes"]["cat"] == {"train": 3, "val": 3, "test": 3} and s.identity["notes"] == []
    held = load("directory", input_shape=(8, 8, 3), root=str(write_folder(tmp_path / "two")), validation="split",
                split=0.5)
    assert len(held.x_train) == 3 and len(held.x_val) == 3 and isinstance(held.x_val, np.memmap)
    assert held.identity["notes"] == ["validation: 3 images held out of train/ (seed 0)"]


def test_one_folder_of_class_folders_is_split_per_class(tmp_path):
    root = class_folder(tmp_path / "imgs", {"a": 20, "b": 10})
    s = load_split(root, {"val": 0.2, "test": 0.1, "seed": 4}, validation="split")
    assert [len(s.x_train), len(s.x_val), len(s.x_test)] == [21, 6, 3]
    assert np.bincount(s.y_test).tolist() == [2, 1] and np.bincount(s.y_val).tolist() == [4, 2]
    for x, y in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):  # labels match the images
        assert np.array_equal(x[:, 0, 0, 0] // 100, y)
    assert s.identity["split"] == {"val": 0.2, "test": 0.1, "seed": 4} and s.identity["layout"] == "one folder of class folders"
    everything = np.concatenate([s.x_train, s.x_val, s.x_test])[:, 0, 0, 0]
    assert sorted(everything.tolist()) == sorted([2 * i for i in range(20)] + [2 * i + 100 for i in range(10)])


def test_the_split_is_the_same_whatever_the_runs_seed(tmp_path):
    root = class_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    first = load("directory", input_shape=(4, 4, 1), root=str(root), seed=0)
    other_seed = load("directory", input_shape=(4, 4, 1), root=str(root), seed=7, validation="split")
    assert np.array_equal(first.x_test, other_seed.x_test) and np.array_equal(first.y_test, other_seed.y_test)
    assert first.identity["split_digest"] == other_seed.identity["split_digest"]
    assert first.identity["split"] == {"val": 0.1, "test": 0.1, "seed": 0}
    reseeded = load_split(root, {"seed": 1})
    assert not np.array_equal(first.x_test, reseeded.x_test)
    assert reseeded.identity["split_digest"] != first.identity["split_digest"]
    assert rundata.differences(first.identity, reseeded.identity) == [
        "the images are not split as they were (another file list, data.split or labels)"]
    assert rundata.differences(first.identity, dict(first.identity, resize="pad")) == [
        "resize was 'stretch', is 'pad'"]


def test_a_csv_of_paths_and_labels(tmp_path):
    write_image(tmp_path / "pics" / "one.png", "L", value=11)
    write_image(tmp_path / "pics" / "two.png", "L", value=22)
    write_image(tmp_path / "elsewhere" / "three.png", "L", value=33)
    csv = tmp_path / "lists" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text(f"path,label,split\n../pics/one.png,x,train\n../pics/two.png,y,train\n"
                   f"{tmp_path / 'elsewhere' / 'three.png'},y,test\n")
    s = load("csv", input_shape=(8, 8, 1), root=str(csv))
    assert s.x_train[:, 0, 0, 0].tolist() == [11, 22] and s.y_train.tolist() == [0, 1]
    assert s.x_test[:, 0, 0, 0].tolist() == [33] and s.class_names == ["x", "y"]
    assert s.identity["dataset"] == "csv" and s.identity["layout"] == "a CSV of path,label"
    assert s.identity["files"][0]["path"] == str(csv) and rundata.recorded_location(s.identity) == csv
    csv.write_text("path,label\n../pics/one.png,x\n../pics/two.png,y\n../pics/missing.png,y\n")
    with pytest.raises(DataError, match=r"missing\.png: cannot read it: No such file or directory"):
        load_split(csv, {"val": 0, "test": 0.4}, dataset="csv", input_shape=(8, 8, 1))


def test_image_folder_problems(tmp_path):
    write_folder(tmp_path / "mismatch")
    write_image(tmp_path / "mismatch" / "test" / "bird" / "x.png", "RGB")
    with pytest.raises(DataError, match="bird"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "mismatch"))
    with pytest.raises(DataError, match="neither train/ and test/ folders nor class folders"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "mismatch" / "train" / "cat"))
    with pytest.raises(DataError, match="1 or 3"):
        load("directory", input_shape=(8, 8, 4), root=str(tmp_path / "mismatch"))
    with pytest.raises(DataError, match="the model has 3 outputs but directory has 2 classes"):
        load("directory", input_shape=(8, 8, 3), root=str(write_folder(tmp_path / "imgs")), num_classes=3)


# ---------------------------------------------------------------- unreadable files


def write_bad_files(folder: Path) -> dict[Path, str]:
    """Six unreadable files in `folder`, with what their reasons start with."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    good = write_image(folder / "_.png", value=noise).read_bytes()
    (folder / "_.png").unlink()
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "truncated.png").write_bytes(good[:-30])  # cut inside the image data
    (folder / "text.png").write_text("I am text, not a PNG\n")
    write_image(folder / "bomb.png", "L", (10, 10))  # over max_image_pixels 50
    (folder / "link.png").symlink_to("missing.png")
    return {folder / "empty.png": "empty file", folder / "corrupt.jpg": "Truncated File Read",
            folder / "truncated.png": "image file is truncated", folder / "text.png": "not an image Pillow can read",
            folder / "bomb.png": "10x10 pixels, over data.max_image_pixels (50): refused as a decompression bomb",
            folder / "link.png": "a broken symbolic link (to missing.png)"}


def small_folder(root: Path) -> Path:
    """train/ and test/ with classes a and b, 6x6 gray images (36 pixels: under max_image_pixels 50)."""
    for split, n in (("train", 4), ("test", 2)):
        for k, name in enumerate("ab"):
            for i in range(n):
                write_image(root / split / name / f"{i}.png", "L", (6, 6), value=100 * k + i)
    return root


def test_every_unreadable_file_is_listed_in_one_error(tmp_path):
    root = small_folder(tmp_path / "imgs")
    bad = write_bad_files(root / "train" / "b")
    with pytest.raises(DataError) as info:
        load("directory", input_shape=(6, 6, 1), root=str(root), max_image_pixels=50)
    message = info.value.message
    assert message.startswith(f"{root}: 6 images cannot be read: ")
    for path, reason in bad.items():
        assert f"{path}: {reason}" in message
    assert "skip_bad_files" in info.value.hint and not message.endswith(" more")


def test_unreadable_files_are_remembered_by_the_cache(tmp_path, monkeypatch):
    root = small_folder(tmp_path / "imgs")
    write_bad_files(root / "train" / "b")
    with pytest.raises(DataError) as first:
        load("directory", input_shape=(6, 6, 1), root=str(root), max_image_pixels=50)
    monkeypatch.setattr(decode, "decode_into", no_decoding)  # the .json beside the .npy lists them
    with pytest.raises(DataError) as again:
        load("directory", input_shape=(6, 6, 1), root=str(root), max_image_pixels=50)
    assert again.value.message == first.value.message
    assert len(load("directory", input_shape=(6, 6, 1), root=str(root), max_image_pixels=50,
                    skip_bad_files=True).x_train) == 8


def test_more_than_ten_unreadable_files_are_counted(tmp_path):
    root = small_folder(tmp_path / "imgs")
    for i in range(13):
        (root / "test" / "a" / f"x{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load("directory", input_shape=(6, 6, 1), root=str(root))
    message = info.value.message
    assert message.startswith(f"{root}: 13 images cannot be read: ") and message.endswith("; and 3 more")
    assert message.count(": empty file") == 10 and "x09.png" in message and "x10.png" not in message


def test_skip_bad_files_trains_without_them_and_says_which(tmp_path):
    root = small_folder(tmp_path / "imgs")
    bad = write_bad_files(root / "train" / "b")
    write_image(root / "test" / "a" / "zz.png", "L", (6, 6), value=50)
    (root / "test" / "a" / "zz.png").write_bytes(b"")
    s = load("directory", input_shape=(6, 6, 1), root=str(root), max_image_pixels=50, skip_bad_files=True)
    assert s.x_train[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 100, 101, 102, 103]  # the readable ones, in order
    assert s.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and len(s.x_test) == 4
    identity = s.identity
    assert identity["skipped"] == 7 and identity["files"][0]["images"] == 19
    listed = {Path(f["path"]): f["reason"] for f in identity["skipped_files"]}
    assert listed == {**bad, root / "test" / "a" / "zz.png": "empty file"}
    assert {f["split"] for f in identity["skipped_files"]} == {"train", "test"}
    assert identity["classes"] == {"a": {"train": 4, "test": 2}, "b": {"train": 4, "test": 2}}
    lines = rundata.describe(s)
    assert lines[0] == "data directory: 2 classes, images train/test: a 4/2, b 4/2"
    assert lines[1].startswith("skipped 7 unreadable images (data.skip_bad_files), e.g. ")
    assert lines[1].endswith("; listed in manifest.json")


def test_skipping_every_image_of_a_split_is_refused(tmp_path):
    root = small_folder(tmp_path / "imgs")
    for path in (root / "test").rglob("*.png"):
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 4 images of the test split can be read, e\.g\. .*: empty file"):
        load("directory", input_shape=(6, 6, 1), root=str(root), skip_bad_files=True)


@pytest.mark.parametrize(("make_link", "why"), [
    (lambda link: link.symlink_to("missing.png"), "a broken symbolic link (to missing.png)"),
    (lambda link: link.symlink_to(link.name), "a symbolic link loop"),
    (lambda link: (link.symlink_to("y.png"), (link.parent / "y.png").symlink_to(link.name)), "a symbolic link loop"),
])
def test_a_broken_or_looping_link_among_the_images_is_named(tmp_path, make_link, why):
    write_folder(tmp_path / "imgs")
    link = tmp_path / "imgs" / "train" / "cat" / "x.png"
    make_link(link)
    with pytest.raises(DataError) as info:
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert str(info.value).startswith(f"{tmp_path / 'imgs'}: ") and f"cannot be read: {link}: {why}" in str(info.value)
    if not link.with_name("y.png").is_symlink():
        assert str(info.value) == f"{tmp_path / 'imgs'}: 1 image cannot be read: {link}: {why}"


# ---------------------------------------------------------------- the cache


def test_the_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert len(cache_files(tmp_path, "images-*.npy")) == 2 and len(cache_files(tmp_path, "images-*.json")) == 2
    assert cache_files(tmp_path, ".*") == []  # no temporary file left
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta == {"version": folders.CACHE_VERSION, "count": 6, "bad": {}}
    monkeypatch.setattr(decode, "decode_into", no_decoding)
    second = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert np.array_equal(first.x_train, second.x_train) and first.identity == second.identity
    assert isinstance(second.x_train, np.memmap) and not second.x_train.flags.writeable
    for change in ({"input_shape": (8, 8, 1)}, {"input_shape": (4, 4, 3)}, {"resize": "crop"},
                   {"max_image_pixels": 10**6}):
        with pytest.raises(AssertionError, match="decoded again"):  # another entry
            load("directory", **{"input_shape": (8, 8, 3), "root": str(tmp_path / "imgs"), **change})


def test_a_changed_image_is_decoded_again_with_its_split_only(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    write_image(tmp_path / "imgs" / "test" / "cat" / "a.png", "RGB", value=99)
    os.utime(tmp_path / "imgs" / "test" / "cat" / "a.png", ns=(1, 1))
    real, decoding = decode.decode_into, []

    def recorded(handle, paths, *args, **kwargs):
        decoding.append([p.relative_to(tmp_path / "imgs").as_posix() for p in paths])
        return real(handle, paths, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_into", recorded)
    again = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert np.all(again.x_test[0] == 99) and np.all(again.x_train[0] == 10)
    assert len(decoding) == 1 and decoding[0][0] == "test/cat/a.png"  # train/ came from the cache
    assert len(cache_files(tmp_path, "*.npy")) == 3  # the old entry stays (another fingerprint)


@pytest.mark.parametrize("damage", ["truncated npy", "missing json", "garbage json", "wrong count"])
def test_a_damaged_cache_entry_is_decoded_again(tmp_path, damage):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    train, test = np.array(first.x_train), np.array(first.x_test)  # copies: the damage is done to the mapped files
    npys = sorted((tmp_path / "cache").glob("images-*.npy"))
    for npy in npys:
        if damage == "truncated npy":
            npy.write_bytes(npy.read_bytes()[:300])
        elif damage == "missing json":
            npy.with_suffix(".json").unlink()
        elif damage == "garbage json":
            npy.with_suffix(".json").write_text("{not json")
        else:
            npy.with_suffix(".json").write_text(json.dumps({"version": folders.CACHE_VERSION, "bad": {"0": "x"}}))
    again = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert np.array_equal(again.x_test, test) and np.array_equal(again.x_train, train)
    assert all(npy.stat().st_size == 128 + 6 * 8 * 8 * 3 for npy in npys)
    assert all(json.loads(npy.with_suffix(".json").read_text())["bad"] == {} for npy in npys)


def test_leftovers_of_dead_decodes_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc/sys/kernel/pid_max").exists() else 4194304
    dead = cache / f".images-0123456789ab.{pid_max + 1}.tmp"  # no process can have that id
    live = cache / f".images-ba9876543210.{os.getpid()}.tmp"
    odd = cache / ".images-weird.tmp"
    for path in (dead, live, odd):
        path.write_bytes(b"partial")
    load("directory", input_shape=(8, 8, 3), root=str(write_folder(tmp_path / "imgs")))
    assert not dead.exists() and live.exists() and odd.exists()


def test_an_interrupted_decode_leaves_nothing_behind(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    real = decode.decode_into

    def interrupted(handle, paths, *args, **kwargs):
        real(handle, paths[:2], *args, **kwargs)  # some images written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(decode, "decode_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert cache_files(tmp_path) == [] and cache_files(tmp_path, ".*") == []
    monkeypatch.setattr(decode, "decode_into", real)
    assert len(load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs")).x_train) == 6


def test_without_a_cache_nothing_is_written(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    s = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), cache=False)
    assert not (tmp_path / "cache").exists() and list(temporary.iterdir()) == []  # decoded into an unlinked file
    assert isinstance(s.x_train, np.memmap) and np.all(s.x_train[0] == 10) and np.all(s.x_test[5] == 220)


def test_a_cache_that_cannot_be_written_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("a file, not a folder")
    monkeypatch.setenv("CNNCTL_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(DataError) as info:
        load("directory", input_shape=(8, 8, 3), root=str(write_folder(tmp_path / "imgs")))
    assert info.value.message == f"{tmp_path / 'afile' / 'cache'}: cannot write the decoded images (Not a directory)"
    assert info.value.hint.startswith("set $CNNCTL_CACHE to a folder with room for them")


# ---------------------------------------------------------------- decode progress


def test_progress_counts_every_image_up_to_the_total(tmp_path, monkeypatch):
    from rich.console import Console

    from cnnctl import render

    monkeypatch.setattr(decode, "CHUNK", 4)
    root = class_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    (root / "b" / "zz.png").symlink_to("nowhere.png")  # not given to the decoder: still counted
    calls = []
    load_split(root, None, skip_bad_files=True, validation="split", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (21, 21) and all(t == 21 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    console = Console(file=io.StringIO(), width=200)
    write_image(root / "a" / "new.png", "L", (4, 4))
    load_split(root, None, skip_bad_files=True, progress=render.Decoding(console, bar=True))  # no terminal: no bar, one line when it is over
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("decoded ") and lines[0].endswith(" images/s)"), lines
    monkeypatch.setattr(decode, "decode_into", no_decoding)
    silent = []
    load_split(root, None, skip_bad_files=True, progress=silent.append)
    assert silent == []  # all cached: no progress at all


# ---------------------------------------------------------------- from the command line


def test_cnnctl_train_lists_the_unreadable_files_and_exits_2(tmp_path, cli, monkeypatch):
    from conftest import stderr_of

    root = small_folder(tmp_path / "imgs")
    bad = write_bad_files(root / "train" / "b")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.yaml", tiny_config(
        input_shape=(6, 6, 1), pool=False, classes=2,
        data={"dataset": "directory", "root": str(root), "max_image_pixels": 50}))
    result = cli("train", config, "--quiet")
    assert result.exit_code == 2, result.output
    errors = [line for line in stderr_of(result).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {root}: 6 images cannot be read: ")
    assert all(str(path) in errors[0] for path in bad)
    assert "hint: remove or replace them, or set data.skip_bad_files: true" in stderr_of(result)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_a_run_on_an_image_folder_from_start_to_predict(tmp_path, cli, monkeypatch):
    """Train 1 epoch on a class folder with an unreadable file skipped; the manifest says what it was trained
    on; evaluate and predict find the data through the run; a resume on changed folder contents is refused."""
    from conftest import stderr_of

    root = class_folder(tmp_path / "imgs", {"a": 20, "b": 19}, size=(8, 8))
    (root / "b" / "broken.png").write_text("not a png")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.yaml", tiny_config(
        input_shape=(8, 8, 1), classes=2, train={"epochs": 1, "validation": "split"},
        data={"dataset": "directory", "root": "imgs", "skip_bad_files": True, "split": {"test": 0.2}}))
    result = cli("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    dataset = json.loads((run / "manifest.json").read_text())["dataset"]
    assert dataset["skipped"] == 1 and dataset["skipped_files"] == [
        {"split": dataset["skipped_files"][0]["split"], "path": str(root / "b" / "broken.png"),
         "reason": "not an image Pillow can read"}]
    per_class = {"train": 14, "val": 2, "test": 4}  # of 20 files a class: test 0.2, val 0.1
    a, b = dataset["classes"]["a"], dataset["classes"]["b"]
    assert a == per_class and b == {p: n - (p == dataset["skipped_files"][0]["split"]) for p, n in per_class.items()}
    assert f"data directory: 2 classes, images train/val/test: a 14/2/4, b {b['train']}/{b['val']}/{b['test']}" \
        in result.output
    assert "skipped 1 unreadable image (data.skip_bad_files), e.g. " in result.output
    assert "decoded 40 images in" in stderr_of(result)
    assert dataset["split"] == {"val": 0.1, "test": 0.2, "seed": 0} and len(dataset["split_digest"]) == 64
    assert dataset["skipped"] == 1 and dataset["skipped_files"] == [
        {"split": "train", "path": str(root / "b" / "broken.png"), "reason": "not an image Pillow can read"}]
    assert dataset["files"][0]["path"] == str(root)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run knows where its data is
    evaluated = cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["examples"] == 4 + b["test"]
    predicted = cli("predict", run, root / "a" / "000.png", "--json")
    assert predicted.exit_code == 0, predicted.output
    assert {t["class"] for t in json.loads(predicted.output)[0]["top"]} == {"a", "b"}

    write_image(root / "a" / "new.png", "L", (8, 8), value=5)
    resumed = cli("train", "--resume", run, "--set", "train.epochs=2", "--quiet")
    assert resumed.exit_code == 2, resumed.output
    assert "the images are not split as they were" in stderr_of(resumed)
    assert f"{root}: images was 40, is 41" in stderr_of(resumed)
