"""Decoding image files into uint8 arrays of the model's input shape, in parallel, file by file.

Pillow decodes (it releases the GIL while decoding and resizing, so threads run in parallel). Each
file either becomes an image or a reason it could not: unreadable, empty, not an image, or a header
claiming more pixels than `data.max_image_pixels` (a decompression bomb, refused before decoding).
Images of another size are fitted by `data.resize`:

- stretch: resized to the input's height and width (the aspect ratio changes);
- crop: the largest centred part of the input's aspect ratio is cut out, then resized;
- pad: resized to fit inside, then centred on black.

Resizing is Pillow's bilinear filter with antialiasing; images already of the right size keep their
exact pixels. JPEGs much larger than the input are decoded at a reduced scale first (libjpeg's DCT
scaling), which is faster and the same up to rounding. Gray images for an RGB model are repeated
over the channels; colour images for a one-channel model are converted with the ITU-R 601 weights
TensorFlow uses (rgb_to_grayscale), and the alpha channel is dropped, as tf.io.decode_image does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CHUNK = 512  # images decoded per round of the thread pool (bounds memory, paces progress)
GRAY = np.asarray([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale's weights

Progress = Callable[[int, int], None]  # (images done, images in all)


def workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def decode_file(path: Path, shape: tuple, resize: str, max_pixels: int) -> np.ndarray | str:
    """The image at `path` as uint8 `shape` (H, W, C), or why it cannot be read (a short reason)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    height, width, channels = shape
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own limit would refuse what data.max_image_pixels allows
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > max_pixels:
                    return f"{w}x{h} pixels, over data.max_image_pixels ({max_pixels:,}): refused as a decompression bomb"
                if image.format == "JPEG" and w >= 2 * width and h >= 2 * height:
                    image.draft("RGB", (width, height))
                image = ImageOps.exif_transpose(image)
                if image.mode.startswith("I;16"):  # 16-bit gray: its high byte, as TensorFlow's decode_png gives
                    image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
                image = image.convert("L" if image.mode in ("L", "I;16", "I", "F") and channels == 1 else "RGB")
                if image.size != (width, height):
                    image = _fit(image, (width, height), resize)
                array = np.asarray(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return _reason(error)
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated, corrupt or unreadable files
        return _reason(error)
    return _channels(array, channels)


def _fit(image, size: tuple[int, int], resize: str):
    from PIL import Image, ImageOps

    if resize == "crop":
        return ImageOps.fit(image, size, Image.Resampling.BILINEAR)
    if resize == "pad":
        return ImageOps.pad(image, size, Image.Resampling.BILINEAR, color=0)
    return image.resize(size, Image.Resampling.BILINEAR)


def _channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == 1 and array.shape[2] == 3:
        gray = np.round(array.astype(np.float32) @ GRAY)
        return np.clip(gray, 0, 255).astype(np.uint8)[:, :, None]
    if channels == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if "cannot identify image file" in text:
        return "not an image Pillow can read"
    return text.split("\n")[0][:160]


def decode_into(handle, paths: list[Path], shape: tuple, resize: str, max_pixels: int,
                progress: Progress | None = None, done_before: int = 0, total: int | None = None) -> dict[int, str]:
    """Decode `paths` in order, writing each good image's bytes to `handle`; {index: reason} of the bad ones.

    Only CHUNK images are held in memory at a time, whatever the number of files.
    """
    bad: dict[int, str] = {}
    total = total if total is not None else len(paths)
    if progress is not None:
        progress(done_before, total)  # starts the clock: images/s counts from the first image
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            for offset, result in enumerate(pool.map(lambda p: decode_file(p, shape, resize, max_pixels), chunk)):
                if isinstance(result, str):
                    bad[start + offset] = result
                else:
                    handle.write(np.ascontiguousarray(result, dtype=np.uint8).tobytes())
            if progress is not None:
                progress(done_before + start + len(chunk), total)
    return bad


def npy_header(shape: Iterable[int]) -> bytes:
    """A .npy (version 1.0) header for a C-ordered uint8 array, always 128 bytes long.

    A fixed length lets the header be written before the number of good images is known and
    rewritten in place afterwards; 128 keeps the data 64-byte aligned in a memory map.
    """
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(int(d) for d in shape)!r}, }}"
    body = text.ljust(128 - 10 - 1) + "\n"
    if len(body) != 118:
        raise ValueError(f"shape {tuple(shape)} does not fit a 128-byte .npy header")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")
