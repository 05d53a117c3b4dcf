"""cnnctl.data.decode: one file to a uint8 array of the input shape (or why not), the resize policies and
channel conversions, the threaded decode into a file, and the .npy header it writes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from cnnctl.data import decode

MAX = 89_478_485  # data.max_image_pixels' default


def decoded(path: Path, shape=(8, 8, 3), resize="stretch", max_pixels=MAX) -> np.ndarray:
    result = decode.decode_file(path, shape, resize, max_pixels)
    assert isinstance(result, np.ndarray), result
    assert result.shape == shape and result.dtype == np.uint8
    return result


def header_bomb(path: Path, width: int, height: int) -> Path:
    """A 60-byte PNG whose header claims width x height gray pixels (its data is a few zero bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- resize policies


@pytest.fixture
def stripes(tmp_path) -> Path:
    """16 wide, 8 high, gray: the left quarter 30, the middle half 120, the right quarter 220."""
    array = np.full((8, 16), 120, np.uint8)
    array[:, :4], array[:, 12:] = 30, 220
    return write_image(tmp_path / "stripes.png", value=array)


def test_stretch_keeps_the_whole_width_squeezed(stripes):
    image = decoded(stripes, (8, 8, 1), "stretch")[:, :, 0]
    assert np.all(image == image[0])  # every row alike
    assert image[0, 0] == 30 and image[0, 7] == 220 and np.all(image[0, 3:5] == 120)
    assert np.all(np.diff(image[0].astype(int)) >= 0)  # blended at the edges, nothing lost


def test_crop_keeps_the_centre(stripes):
    assert np.all(decoded(stripes, (8, 8, 1), "crop") == 120)
    tall = decoded(stripes, (8, 4, 1), "crop")[:, :, 0]  # a narrower aspect ratio: a narrower centre
    assert np.all(tall == 120)


def test_pad_puts_black_bars_top_and_bottom(stripes):
    image = decoded(stripes, (8, 8, 1), "pad")[:, :, 0]
    assert np.all(image[:2] == 0) and np.all(image[6:] == 0)  # 16x8 fits as 8x4, centred
    assert np.array_equal(image[2:6], decoded(stripes, (4, 8, 1), "stretch")[:, :, 0])
    assert image[3, 0] == 30 and image[3, 7] == 220


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_predict_prepares_an_image_as_training_decodes_it(stripes, resize):
    from cnnctl import predict

    x = predict.prepare([stripes], (8, 8, 1), resize)
    assert x.dtype == np.float32 and np.array_equal(x[0], decoded(stripes, (8, 8, 1), resize) / np.float32(255))
    assert predict.prepare([stripes], (8, 8), resize).shape == (1, 8, 8)


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_images_of_the_input_size_keep_their_exact_pixels(tmp_path, resize, mode):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (6, 10, 3) if mode == "RGB" else (6, 10), dtype=np.uint8)
    path = write_image(tmp_path / "noise.png", value=array)
    shape = (6, 10, 3) if mode == "RGB" else (6, 10, 1)
    assert np.array_equal(decoded(path, shape, resize), array.reshape(shape))


def test_a_large_jpeg_decoded_at_reduced_scale_is_the_same_up_to_rounding(tmp_path):
    y, x = np.mgrid[0:128, 0:96]
    array = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it well
    path = write_image(tmp_path / "big.jpg", value=array)
    fast = decoded(path, (16, 12, 3)).astype(int)
    with Image.open(path) as image:  # decoded in full, then resized
        full = np.asarray(image.convert("RGB").resize((12, 16), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(fast - full).mean() < 2 and np.abs(fast - full).max() <= 12


# ---------------------------------------------------------------- channels


def test_gray_becomes_rgb_by_repeating_it(tmp_path):
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    image = decoded(write_image(tmp_path / "g.png", value=array), (8, 8, 3))
    assert all(np.array_equal(image[:, :, c], array) for c in range(3))


def test_rgb_becomes_gray_with_tensorflows_weights(tmp_path):
    array = np.zeros((2, 3, 3), np.uint8)
    array[0, 0], array[0, 1], array[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    array[1] = (10, 200, 30)
    image = decoded(write_image(tmp_path / "c.png", value=array), (2, 3, 1))[:, :, 0]
    expected = np.round(array.astype(np.float64) @ [0.2989, 0.5870, 0.1140]).astype(np.uint8)
    assert np.array_equal(image, expected) and image[0].tolist() == [76, 150, 29]


def test_alpha_is_dropped(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    array[..., 0], array[..., 1], array[..., 2], array[..., 3] = 200, 100, 50, 0  # fully transparent
    array[0, 0, 3] = 255
    image = decoded(write_image(tmp_path / "a.png", value=array), (4, 4, 3))
    assert np.all(image == [200, 100, 50])
    gray = np.stack([np.full((4, 4), 90, np.uint8), np.full((4, 4), 7, np.uint8)], axis=-1)  # LA
    assert np.all(decoded(write_image(tmp_path / "la.png", value=gray), (4, 4, 1)) == 90)
    assert np.all(decoded(tmp_path / "la.png", (4, 4, 3)) == 90)


def test_palette_and_bilevel_images(tmp_path):
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p.gif")
    for name in ("p.png", "p.gif"):
        image = decoded(tmp_path / name, (2, 4, 3))
        assert image[0, 0].tolist() == [0, 0, 0] and np.all(image.reshape(-1, 3)[1:] == [10, 200, 30])
        assert decoded(tmp_path / name, (2, 4, 1))[1, 1, 0] == round(10 * 0.2989 + 200 * 0.587 + 30 * 0.114)
    bilevel = Image.new("1", (4, 2), 1)
    bilevel.putpixel((0, 0), 0)
    bilevel.save(tmp_path / "b.png")
    image = decoded(tmp_path / "b.png", (2, 4, 1))[:, :, 0]
    assert image[0, 0] == 0 and np.all(image.reshape(-1)[1:] == 255)


def test_a_16_bit_gray_png_keeps_its_high_byte_as_tensorflow_decodes_it(tmp_path):
    array = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000 + 300).astype(np.uint16)
    path = write_image(tmp_path / "deep.png", value=array)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    assert np.array_equal(decoded(path, (4, 4, 1))[:, :, 0], (array >> 8).astype(np.uint8))  # not clipped to 255
    assert np.array_equal(decoded(path, (4, 4, 3))[:, :, 2], (array >> 8).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((4, 8), np.uint8)
    array[:, 4:] = 200  # the right half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    Image.fromarray(array).save(tmp_path / "turned.png", exif=exif)
    assert np.array_equal(decoded(tmp_path / "turned.png", (8, 4, 1))[:, :, 0], np.rot90(array, -1))


def test_a_two_dimensional_model_input_is_one_channel(tmp_path):
    write_image(tmp_path / "x.png", "RGB", (5, 3), value=100)
    assert decoded(tmp_path / "x.png", (3, 5, 1)).shape == (3, 5, 1)


# ---------------------------------------------------------------- files that are not images


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_FILES = {  # name -> (content, what the reason says)
    "empty.png": (b"", "empty file"),
    "text.png": (b"hello, I am text\n", "not an image Pillow can read"),
    "corrupt.jpg": (b"\xff\xd8\xff\xe0 not really a jpeg", "Truncated File Read"),
    "truncated.png": (png_bytes()[:300], "image file is truncated"),
    "truncated.jpg": (jpeg_bytes()[:300], "Truncated File Read"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_unreadable_files_give_a_reason(tmp_path, name):
    content, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    assert decode.decode_file(tmp_path / name, (8, 8, 3), "stretch", MAX) == reason


def test_a_missing_file_gives_a_reason(tmp_path):
    assert "No such file" in decode.decode_file(tmp_path / "gone.png", (8, 8, 3), "stretch", MAX)


def test_images_over_max_image_pixels_are_refused_before_decoding(tmp_path):
    write_image(tmp_path / "ten.png", "L", (10, 10))
    reason = decode.decode_file(tmp_path / "ten.png", (8, 8, 1), "stretch", 50)
    assert reason == "10x10 pixels, over data.max_image_pixels (50): refused as a decompression bomb"
    assert decode.decode_file(tmp_path / "ten.png", (8, 8, 1), "stretch", 100).shape == (8, 8, 1)


def test_a_header_claiming_a_huge_image_is_refused_cheaply(tmp_path):
    bomb = header_bomb(tmp_path / "bomb.png", 20_000, 20_000)  # 400 MB of pixels if it were decoded
    assert bomb.stat().st_size < 100
    assert "decompression bomb" in decode.decode_file(bomb, (8, 8, 1), "stretch", MAX)
    assert "decompression bomb" in decode.decode_file(header_bomb(tmp_path / "b2.png", 10_000, 10_000),
                                                      (8, 8, 1), "stretch", MAX)


def test_a_max_image_pixels_above_pillows_own_limit_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow's limit, scaled down with the image
    write_image(tmp_path / "ten.png", "L", (10, 10), value=77)
    assert np.all(decoded(tmp_path / "ten.png", (8, 8, 1), max_pixels=200) == 77)
    assert "over data.max_image_pixels (99)" in decode.decode_file(tmp_path / "ten.png", (8, 8, 1), "stretch", 99)


# ---------------------------------------------------------------- decode_into and the .npy header


def test_decode_into_writes_the_good_images_in_order_and_names_the_bad(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "CHUNK", 2)
    paths = [write_image(tmp_path / f"{i}.png", "L", value=10 * i) for i in range(5)]
    paths[1].write_bytes(b"")
    paths[3].write_text("text")
    calls = []
    buffer = io.BytesIO()
    bad = decode.decode_into(buffer, paths, (8, 8, 1), "stretch", MAX, lambda done, total: calls.append((done, total)),
                             done_before=10, total=20)
    assert bad == {1: "empty file", 3: "not an image Pillow can read"}
    images = np.frombuffer(buffer.getvalue(), np.uint8).reshape(-1, 8, 8, 1)
    assert [int(i.mean()) for i in images] == [0, 20, 40]
    assert calls == [(10, 20), (12, 20), (14, 20), (15, 20)]  # the first call starts the clock
    calls.clear()
    decode.decode_into(io.BytesIO(), paths, (8, 8, 1), "stretch", MAX, lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5)


def test_decode_into_never_holds_more_than_a_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "CHUNK", 3)
    paths = [write_image(tmp_path / f"{i}.png", "L", value=i) for i in range(7)]
    seen = []
    real = decode.decode_file

    def counting(path, *args):
        seen.append(path)
        return real(path, *args)

    class Handle(io.BytesIO):
        def write(self, data):
            assert len(seen) <= 3 * (len(self.getvalue()) // 64 // 3 + 1)  # decoded ahead by a chunk at most
            return super().write(data)

    monkeypatch.setattr(decode, "decode_file", counting)
    assert decode.decode_into(Handle(), paths, (8, 8, 1), "stretch", MAX) == {}


@pytest.mark.parametrize("shape", [(0, 8, 8, 3), (5, 32, 32, 1), (10**12, 8192, 8192, 3)])
def test_npy_header_is_128_bytes_numpy_reads(tmp_path, shape):
    header = decode.npy_header(shape)
    assert len(header) == 128
    if shape[0] > 1000:
        return
    data = np.arange(int(np.prod(shape)), dtype=np.uint64).astype(np.uint8).reshape(shape)
    (tmp_path / "x.npy").write_bytes(header + data.tobytes())
    loaded = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert loaded.shape == shape and np.array_equal(loaded, data)
    assert loaded.ctypes.data % 64 == 0 or loaded.size == 0


def test_npy_header_refuses_a_shape_it_cannot_hold():
    with pytest.raises(ValueError, match="does not fit a 128-byte .npy header"):
        decode.npy_header((10**30,) * 4)
