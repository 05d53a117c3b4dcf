"""The built-in datasets, read from the files keras.datasets uses, found locally or downloaded.

Keras' own download is tried only when the host answers within seconds ($CNNCTL_OFFLINE=1: never).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import ssl
import struct
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.data.arrays import Splits, counted, file_record, read_npz
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


NETWORK_TIMEOUT = 3.0  # seconds to reach a download host before giving up


FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


CIFAR100_FILES = ("train", "test")


@dataclass(frozen=True)
class Builtin:
    """Where keras.datasets keeps a dataset: folders (relative to a search place) and file names."""

    layouts: tuple[tuple[str, tuple[str, ...]], ...]
    wanted: str  # the files to put in place, for error messages
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    host: str  # the download host keras.datasets uses


def _cifar_layouts(folder: str, files: tuple[str, ...], archive: str) -> tuple:
    # Keras 2 extracted to datasets/<folder>/, Keras 3 to datasets/<folder>-target/<folder>/.
    return (("", files), (folder, files), (f"{folder}-target/{folder}", files), ("", (archive,)))


BUILTINS = {
    "mnist": Builtin((("", ("mnist.npz",)),), "mnist.npz", (28, 28),
                     tuple(str(i) for i in range(10)), "storage.googleapis.com"),
    "fashion_mnist": Builtin((("", FASHION_FILES), ("fashion-mnist", FASHION_FILES)),
                             ", ".join(FASHION_FILES) + " (or a fashion-mnist/ folder of them)", (28, 28),
                             ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                              "Sneaker", "Bag", "Ankle boot"), "storage.googleapis.com"),
    "cifar10": Builtin(_cifar_layouts("cifar-10-batches-py", CIFAR10_FILES, "cifar-10-python.tar.gz"),
                       "cifar-10-batches-py/ (data_batch_1..5, test_batch) or cifar-10-python.tar.gz",
                       (32, 32, 3), ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"), "www.cs.toronto.edu"),
    "cifar100": Builtin(_cifar_layouts("cifar-100-python", CIFAR100_FILES, "cifar-100-python.tar.gz"),
                        "cifar-100-python/ (train, test) or cifar-100-python.tar.gz",
                        (32, 32, 3), (), "www.cs.toronto.edu"),
}  # fmt: skip


def search_places(dataset: str, data_dir=None, root=None) -> list[tuple[str, Path]]:
    """Where a built-in dataset's files are looked for, first hit wins: (label, folder) pairs."""
    places = [("--data-dir", data_dir), ("data.root", root), ("$CNNCTL_DATA", os.environ.get("CNNCTL_DATA"))]
    if os.environ.get("KERAS_HOME"):
        places.append(("$KERAS_HOME/datasets", Path(os.environ["KERAS_HOME"]) / "datasets"))
    else:
        places.append(("~/.keras/datasets", Path.home() / ".keras" / "datasets"))
    if dataset == "fashion_mnist":
        places.append(("Debian dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    found = []
    for label, place in places:
        if place:
            place = Path(place).expanduser()
            found.append((label, place.parent if place.is_file() else place))
    return found


def find_builtin_files(dataset: str, data_dir=None, root=None) -> list[Path]:
    """The files of the first complete copy of `dataset` in `search_places`; DataError if none."""
    places = search_places(dataset, data_dir, root)
    for _, place in places:
        for folder, names in BUILTINS[dataset].layouts:
            files = [place / folder / name for name in names]
            if all(f.is_file() for f in files):
                return files
    raise DataError(_not_found(dataset, places))


def _not_found(dataset: str, places: list[tuple[str, Path]], why: str = "") -> str:
    cache = "$KERAS_HOME/datasets" if os.environ.get("KERAS_HOME") else "~/.keras/datasets"
    debian = " (or apt-get install dataset-fashion-mnist)" if dataset == "fashion_mnist" else ""
    searched = ", ".join(str(place) for _, place in places)
    return (f"{dataset}: data files not found. Put {BUILTINS[dataset].wanted} in one of: --data-dir (or "
            f"data.root), $CNNCTL_DATA, {cache}{debian} (searched: {searched}).{' ' + why if why else ''}")


def locate_or_check_download(dataset: str, data_dir, root) -> list[Path] | None:
    """The local files of `dataset`, or None when they are missing but its download host answers.

    DataError (naming the files and every place searched) when neither: offline, that takes
    at most NETWORK_TIMEOUT seconds.
    """
    try:
        return find_builtin_files(dataset, data_dir, root)
    except DataError:
        pass
    places = search_places(dataset, data_dir, root)
    if os.environ.get("CNNCTL_OFFLINE", "") not in ("", "0"):
        raise DataError(_not_found(dataset, places, "Downloads are off (CNNCTL_OFFLINE)."))
    host = BUILTINS[dataset].host
    if not _reachable(host, NETWORK_TIMEOUT):
        raise DataError(_not_found(dataset, places, f"No network to download it ({host} did not answer)."))
    return None


def _locate_or_download(dataset: str, data_dir, root) -> list[Path]:
    files = locate_or_check_download(dataset, data_dir, root)
    if files is not None:
        return files
    places = search_places(dataset, data_dir, root)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # Keras downloads with urllib and no timeout: a stall would hang forever
    try:
        import keras

        getattr(keras.datasets, dataset).load_data()  # downloads into the Keras cache, searched above
    except Exception as error:  # noqa: BLE001 - any download failure is reported the same way
        raise DataError(_not_found(dataset, places, f"Downloading it failed: {error}")) from None
    finally:
        socket.setdefaulttimeout(previous)
    return find_builtin_files(dataset, data_dir, root)


def _reachable(host: str, timeout: float) -> bool:
    """Does `host` complete a verified TLS handshake within `timeout`?

    TLS, not just TCP: some networks accept every connection and answer nothing. Runs in a
    thread because name lookups ignore socket timeouts.
    """
    result = []

    def connect():
        try:
            with socket.create_connection((host, 443), timeout=timeout) as sock:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    result.append(True)
        except OSError:  # includes ssl.SSLError and timeouts
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def load_builtin(data: DataConfig, data_dir) -> Splits:
    info = BUILTINS[data.dataset]
    files = _locate_or_download(data.dataset, data_dir, data.root)
    names = list(info.class_names)
    if data.dataset == "mnist":
        arrays = read_npz(files[0])
    elif data.dataset == "fashion_mnist":
        arrays = [_read_idx(path, image=(i % 2 == 0)) for i, path in enumerate(files)]
    else:
        arrays, names, files = _read_cifar(data.dataset, files, data.cifar100_label_mode)
    x_train, y_train, x_test, y_test = arrays
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.shape[1:] != info.image_shape or len(x) != len(y):
            raise DataError(f"{files[0].parent}: expected {data.dataset} images of shape {info.image_shape} with "
                            f"one label each, got images {x.shape} and labels {y.shape}")  # fmt: skip
    identity = {"dataset": data.dataset, "files": [file_record(p) for p in files]}
    if data.dataset == "cifar100":
        identity["label_mode"] = data.cifar100_label_mode
    return Splits(x_train, y_train, None, None, x_test, y_test, names, identity)


def _read_idx(path: Path, *, image: bool) -> np.ndarray:
    """One gzipped IDX file (the original MNIST format): big-endian magic, sizes, then uint8 data."""
    ndim = 3 if image else 1
    expected_magic = 0x0803 if image else 0x0801
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            magic, *dims = struct.unpack(f">{1 + ndim}I", header)
            if magic != expected_magic:
                kind = "image" if image else "label"
                raise DataError(f"{path}: not an IDX {kind} file (magic {magic:#010x}, expected "
                                f"{expected_magic:#010x})")  # fmt: skip
            if dims[0] > 10_000_000 or (image and tuple(dims[1:]) != (28, 28)):
                raise DataError(f"{path}: unexpected IDX sizes {dims}")
            out = np.empty(dims, dtype=np.uint8)
            got = f.readinto(memoryview(out.reshape(-1)))
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if got != out.size or extra:
        raise DataError(f"{path}: the header announces {out.size} bytes of data, the file holds "
                        f"{got if got != out.size else 'more'}")  # fmt: skip
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a tampered file cannot run code."""

    allowed = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # avoids numpy 2's numpy.core warning
        return getattr(np, name)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        value = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise DataError(f"{where}: not a readable CIFAR pickle ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a dict, got {type(value).__name__}")
    return value


def _cifar_blobs(files: list[Path], wanted: tuple[str, ...], meta: str) -> dict[str, tuple[str, bytes]]:
    """name -> (where, bytes) for the batch files and, if present, the meta file."""
    if not files[0].name.endswith(".tar.gz"):
        paths = [*files, files[0].parent / meta]
        return {p.name: (str(p), p.read_bytes()) for p in paths if p.is_file()}
    blobs = {}
    try:
        with tarfile.open(files[0], "r|gz") as tar:  # streamed: nothing is extracted to disk
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in (*wanted, meta) and name not in blobs:
                    blobs[name] = (f"{files[0]}:{member.name}", tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{files[0]}: not a readable .tar.gz archive ({error})") from None
    missing = [n for n in wanted if n not in blobs]
    if missing:
        raise DataError(f"{files[0]}: the archive has no {', '.join(missing)}")
    return blobs


def _read_cifar(dataset: str, files: list[Path], label_mode: str):
    """CIFAR python pickles: N x 3072 uint8 rows in channel-first order, labels as lists."""
    wanted = CIFAR10_FILES if dataset == "cifar10" else CIFAR100_FILES
    meta = "batches.meta" if dataset == "cifar10" else "meta"
    label_key = b"labels" if dataset == "cifar10" else f"{label_mode}_labels".encode()
    blobs = _cifar_blobs(files, wanted, meta)
    parts = []
    for name in wanted:
        where, blob = blobs[name]
        batch = _unpickle(blob, where)
        x, y = batch.get(b"data"), batch.get(label_key)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(f"{where}: b'data' must be a uint8 array of shape (N, 3072)")
        if y is None or len(y) != len(x):
            held = "is missing" if y is None else f"holds {counted(len(y), 'label')}"
            raise DataError(f"{where}: b'data' holds {counted(len(x), 'image')} but {label_key!r} {held}")
        parts.append((x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(y, dtype=np.int64)))
    arrays = []
    for group in (parts[:-1], parts[-1:]):  # the training batches, then the test batch
        images = np.empty((sum(len(x) for x, _ in group), 32, 32, 3), dtype=np.uint8)
        arrays += [np.concatenate([x for x, _ in group], out=images), np.concatenate([y for _, y in group])]
    names = list(BUILTINS[dataset].class_names)
    if meta in blobs:
        meta_key = b"label_names" if dataset == "cifar10" else f"{label_mode}_label_names".encode()
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(blobs[meta][1], meta)[meta_key]]
        if not files[0].name.endswith(".tar.gz"):
            files = [*files, files[0].parent / meta]
    if not names:
        names = [str(i) for i in range(20 if label_mode == "coarse" else 100)]
    return arrays, names, files
