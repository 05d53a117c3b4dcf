"""Classify image files with a trained model: top-k classes and their probabilities.

Images are prepared exactly as an image dataset is for training (`decode.decode_file`): decoded,
converted to the model's channels, fitted to its height and width by the run's `data.resize` when
their size differs, then scaled to [0, 1]. Class names come from the run (manifest.json), or
for a bare .keras file from --config; without either they are the class indices. A model trained on
logits (train.loss.from_logits) gets its softmax from the same config: a bare .keras file of such a
model needs --config (or its run directory) for its outputs to be probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnctl import data, files, rundir
from cnnctl.data import decode, images
from cnnctl.errors import CnnctlError, DataError, RunError

BATCH = 64
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit, data.max_image_pixels' default


def find_images(path: str | Path) -> list[Path]:
    """A file as given, or every image file (by suffix) directly in a folder, sorted by name."""
    path = Path(path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir()
                        if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES and not p.name.startswith("."))
        if not images:
            raise DataError(f"{path}: no images ({', '.join(data.IMAGE_SUFFIXES)}) in this folder")
        return images
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def config_class_names(config) -> list[str] | None:
    """Class names a config implies: data.class_names, a built-in dataset's, or an image folder's."""
    if config.data.class_names:
        return list(config.data.class_names)
    builtin = data.BUILTINS.get(config.data.dataset)
    if builtin is not None and builtin.class_names:
        return list(builtin.class_names)
    if config.data.dataset in ("directory", "csv") and config.data.root:
        try:
            return images.list_files(config.data).class_names
        except DataError:
            return None
    return None


def load_classifier(target: str | Path, config_path: str | Path | None = None):
    """(keras model, class names or None, where the names came from) for a run directory or a .keras file.

    The model's outputs are probabilities: a model trained on logits gets its softmax, as the config given
    (or the run's) says; a bare .keras file without --config is taken to output probabilities.
    """
    from cnnctl.config import load_config
    from cnnctl.model import load_model, probability_model

    target = Path(target)
    names, source = None, None
    if target.is_dir() or target.name == rundir.MANIFEST:
        run_dir = rundir.resolve(target)
        model_path = run_dir / rundir.BEST
        if not model_path.is_file():
            raise RunError(f"{run_dir}: the run has no {rundir.BEST} (it did not finish an epoch)")
    else:
        model_path, run_dir = target, None
        inside = target.parent.parent if target.parent.name == rundir.CHECKPOINTS else None
        if config_path is None and inside is not None and (inside / rundir.CONFIG).is_file():
            run_dir = inside  # checkpoints/best.keras of a run: the run knows its classes
    if config_path is not None:
        names, source = config_class_names(load_config(config_path)), str(config_path)
    elif run_dir is not None:
        try:
            names, source = rundir.read_json(run_dir / rundir.MANIFEST).get("class_names"), str(run_dir)
        except RunError:
            names = None
        if names is None:
            names, source = config_class_names(load_config(run_dir / rundir.CONFIG)), str(run_dir)
    model = load_model(model_path)
    outputs = int(model.output_shape[-1])
    if names is not None and len(names) != outputs:
        raise RunError(f"{source}: names {len(names)} classes but the model {model_path} has {outputs} outputs")
    settings = config_path if config_path is not None else run_dir / rundir.CONFIG if run_dir is not None else None
    from_logits = settings is not None and load_config(settings).train.loss.from_logits
    return probability_model(model, from_logits), names, source


def prepare(paths: list[Path], input_shape: tuple, resize: str = "stretch", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """float32 images in [0, 1], shaped (N, *input_shape); DataError naming an unreadable file."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise DataError(f"the model takes inputs of shape {shape}: predict reads images for models whose input "
                        "is [H, W, 1 or 3] or [H, W]")
    decode_shape = shape if len(shape) == 3 else (*shape, 1)
    out = np.empty((len(paths), *decode_shape), dtype=np.float32)
    for i, path in enumerate(paths):
        if not path.is_file():
            raise DataError(f"{path}: not a file")
        image = decode.decode_file(path, decode_shape, resize, max_pixels)  # the training data's own conversion
        if isinstance(image, str):
            raise DataError(f"{path}: cannot read image ({image})")
        out[i] = image / np.float32(255.0)
    return out.reshape((len(paths), *shape))


def _decode_settings(target: Path, config_path) -> tuple[str, int]:
    """(data.resize, data.max_image_pixels) of the config given, or of the run `target` is (or holds the
    checkpoint of); the defaults without one."""
    from cnnctl.config import load_config

    for candidate in (config_path, target / rundir.CONFIG, target.parent.parent / rundir.CONFIG):
        if candidate is not None and Path(candidate).is_file():
            try:
                data = load_config(candidate).data
            except CnnctlError:  # an unreadable config: the defaults
                break
            return data.resize, data.max_image_pixels
    return "stretch", MAX_PIXELS


def predict(target: str | Path, images: str | Path, *, top_k: int = 3, config_path: str | Path | None = None,
            out: str | Path | None = None, force: bool = False) -> list[dict]:
    """For each image: {"image": path, "top": [{"class", "index", "probability"}, ...]}, best first;
    also written to `out` as JSON (checked by `rundir.check_output`) when given."""
    destination = rundir.check_output(out, force=force) if out is not None else None
    paths = find_images(images)
    model, names, _ = load_classifier(target, config_path)
    x = prepare(paths, model.input_shape[1:], *_decode_settings(Path(target), config_path))
    probabilities = np.asarray(model.predict(x, batch_size=BATCH, verbose=0), dtype=np.float64)
    if (probabilities < 0).any():  # no softmax, sigmoid or relu gives these: logits, of a model without its config
        raise RunError(f"{target}: the model's outputs are not probabilities (some are negative): a model trained "
                       "on logits (train.loss.from_logits: true) needs its config",
                       hint="give --config with the run's config.yaml, or predict with the run directory")
    k = max(1, min(top_k, probabilities.shape[1]))
    results = []
    for path, row in zip(paths, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:k]
        results.append({"image": str(path), "top": [
            {"class": names[i] if names else str(i), "index": int(i), "probability": float(row[i])} for i in best]})
    if destination is not None:
        try:
            files.write_json(destination, results)
        except OSError as exc:
            raise RunError(f"{destination}: cannot write the predictions: {exc.strerror}") from None
    return results
