"""cnnctl.data.folders: image folders (train/<class>/, test/<class>/, val/) made here, decoded to the
input shape and cached on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load

from cnnctl.data import folders
from cnnctl.errors import DataError

pytestmark = pytest.mark.usefixtures("isolated")


def write_image(path: Path, mode: str, size=(8, 8), value=100, fmt=None):
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value,) * len(mode)
    Image.new(mode, size, color).save(path, fmt)


def write_folder(root: Path, splits=("train", "test")):
    for split in splits:
        write_image(root / split / "cat" / "a.png", "RGB", value=10)
        write_image(root / split / "cat" / "b.png", "RGBA", size=(16, 12), value=20)  # resized, alpha dropped
        write_image(root / split / "cat" / "c.bmp", "RGB", value=30)
        write_image(root / split / "dog" / "d.jpg", "RGB", value=200)
        write_image(root / split / "dog" / "e.png", "L", value=210)  # grayscale converted to RGB
        write_image(root / split / "dog" / "f.gif", "L", value=220)
        (root / split / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_classes_resize_and_channels(tmp_path):
    write_folder(tmp_path / "imgs")
    rgb = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), num_classes=2, validation="test")
    assert rgb.class_names == ["cat", "dog"] and rgb.x_train.shape == (6, 8, 8, 3) and rgb.x_train.dtype == np.uint8
    assert list(rgb.y_train) == [0, 0, 0, 1, 1, 1] and rgb.x_test.shape == (6, 8, 8, 3)
    assert np.all(rgb.x_train[0] == 10) and np.all(rgb.x_train[1] == 20) and np.all(rgb.x_train[4] == 210)
    assert abs(int(rgb.x_train[3].mean()) - 200) <= 2  # JPEG is lossy
    gray = load("directory", input_shape=(8, 8, 1), data_dir=tmp_path / "imgs")
    assert gray.x_train.shape == (6, 8, 8, 1) and np.all(gray.x_train[0] == 10) and np.all(gray.x_train[5] == 220)
    assert load("directory", input_shape=(4, 4), data_dir=tmp_path / "imgs").x_test.shape == (6, 4, 4)
    assert rgb.identity["dataset"] == "directory" and rgb.identity["files"][0]["images"] == 12


def test_image_folder_cache_is_written_and_reused(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    cached = list((tmp_path / "cache").glob("images-*.npz"))
    assert len(cached) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "decode_images", no_decoding)
    second = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert np.array_equal(first.x_train, second.x_train) and first.identity == second.identity
    with pytest.raises(AssertionError, match="decoded again"):  # another shape is another cache entry
        load("directory", input_shape=(8, 8, 1), root=str(tmp_path / "imgs"))


def test_damaged_cache_is_decoded_again(tmp_path):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    (cached,) = (tmp_path / "cache").glob("images-*.npz")
    cached.write_bytes(cached.read_bytes()[:50])
    assert np.array_equal(load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs")).x_test, first.x_test)
    assert cached.stat().st_size > 1000


def test_image_folder_without_cache_writes_nothing(tmp_path):
    write_folder(tmp_path / "imgs")
    load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), cache=False)
    assert not (tmp_path / "cache").exists()


def test_image_folder_val_subfolder_is_the_split(tmp_path):
    write_folder(tmp_path / "imgs", splits=("train", "test", "val"))
    s = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), validation="split")
    assert len(s.x_train) == 6 and len(s.x_val) == 6 and list(s.y_val) == [0, 0, 0, 1, 1, 1]


def test_image_folder_problems(tmp_path):
    write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"train/dog/broken\.jpg"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    write_folder(tmp_path / "mismatch")
    write_image(tmp_path / "mismatch" / "test" / "bird" / "x.png", "RGB")
    with pytest.raises(DataError, match="bird"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "mismatch"))
    with pytest.raises(DataError, match="train/"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path))
    with pytest.raises(DataError, match="1 or 3"):
        load("directory", input_shape=(8, 8, 4), root=str(tmp_path / "imgs"))


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
    assert str(info.value) == f"{link}: {why}"
