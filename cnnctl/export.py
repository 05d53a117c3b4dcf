"""Export a run's best model as .keras, a TensorFlow SavedModel, TFLite (LiteRT) or ONNX, verified.

The export is written under a temporary name in the destination's folder, then run on a batch of
the run's test images next to the Keras model. Only if every output agrees within the format's
tolerance is it renamed into place; otherwise it is deleted and `ExportError` says by how much
they differed. An existing destination is never overwritten.

SavedModel, TFLite and ONNX are exported from a float32 copy of the model (same weights): a model
trained in mixed precision computes in bfloat16/float16, which TFLite and ONNX runtimes do not
run well or at all. Such an export is checked twice: tightly against the float32 Keras model
(conversion errors), and loosely against the model as trained (the precision change itself).

A model trained on logits (train.loss.from_logits) is exported with its softmax (`model.probability_model`):
every export outputs class probabilities.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnctl import rundir
from cnnctl.errors import DataError, ExportError, RunError

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("keras", "saved_model", "tflite", "onnx")
SUFFIXES = {"keras": ".keras", "saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}
# Largest absolute difference allowed between an export's outputs (class probabilities) and the
# Keras model's. keras/saved_model run the same TensorFlow kernels; TFLite (XNNPACK) and ONNX Runtime
# have kernels of their own, with other summation orders.
TOLERANCES = {"keras": 1e-4, "saved_model": 1e-4, "tflite": 1e-3, "onnx": 1e-3}
# float32 export against the model as trained in mixed precision: bfloat16 keeps 8 significant
# bits, float16 11; small CNNs differ by ~5e-3 (bfloat16) here, so 10x headroom.
MIXED_TOLERANCES = {"mixed_bfloat16": 5e-2, "mixed_float16": 1e-2}
CHECK_IMAGES = 64


@dataclass
class ExportResult:
    path: Path
    format: str
    bytes: int
    images: int  # how many inputs the check ran
    images_from: str  # "test images", or random images and why
    difference: float  # largest |export - keras model| over all outputs
    tolerance: float
    precision: str  # of the trained model
    trained_difference: float | None = None  # against the mixed-precision model as trained
    trained_tolerance: float | None = None


def before_verify(path: Path, format: str) -> None:
    """Called with the written, not yet verified export. Does nothing; tests replace it to damage
    the export and check that verification catches it."""


def default_destination(run_dir: Path, format: str) -> Path:
    return Path(run_dir) / "export" / f"model{SUFFIXES[format]}" if format != "saved_model" else \
        Path(run_dir) / "export" / "saved_model"


def float32_copy(model):
    """The same model and weights with every layer computing in float32."""
    import keras

    def rebuild(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def _check_images(run_dir: Path, data_dir, shape: tuple) -> tuple[np.ndarray, str]:
    import numpy as np

    from cnnctl import rundata

    try:
        x = rundata.test_split(run_dir, data_dir=data_dir)[1].x_test[:CHECK_IMAGES]
        return x.astype(np.float32) / 255.0, "test images"
    except DataError as exc:  # the data is elsewhere: random images still exercise every weight
        x = np.random.default_rng(0).random((CHECK_IMAGES, *shape), dtype=np.float32)
        return x, f"random images (the run's test data is not available: {exc.message})"


def _write(format: str, model, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "keras":
            model.save(path)
        elif format == "saved_model":
            model.export(path, format="tf_saved_model", verbose=False)
        elif format == "tflite":
            model.export(path, format="litert", verbose=False)
        else:
            model.export(path, format="onnx", verbose=False)


def _tflite_interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own, deprecated but still shipped with 2.21
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path))


def _run(format: str, path: Path, x: np.ndarray) -> np.ndarray:
    """The exported model's outputs on x, run by the runtime that format is made for."""
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "keras":
            from cnnctl.model import load_model

            return np.asarray(load_model(path).predict(x, verbose=0))
        if format == "saved_model":
            import tensorflow as tf

            loaded = tf.saved_model.load(str(path))  # held: its variables live as long as it does
            return np.asarray(loaded.serve(tf.constant(x)))
        if format == "tflite":
            interpreter = _tflite_interpreter(path)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, x.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(index, x)
            interpreter.invoke()
            return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"the export's outputs have shape {a.shape}, the Keras model's {b.shape}")
    difference = np.abs(a - b)
    return float(difference.max()) if np.isfinite(difference).all() else float("inf")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _missing_packages(format: str, error: ImportError) -> ExportError:
    packages = {"onnx": "tf2onnx onnx onnxruntime", "tflite": "ai-edge-litert"}.get(format, "")
    return ExportError(f"--format {format} needs packages that are not installed: {error}",
                       hint=f"pip install {packages}" if packages else None)


def _place(artifact: Path, destination: Path) -> None:
    """Move the verified export to its destination, never replacing anything there."""
    if os.path.lexists(destination):
        raise RunError(f"{destination}: appeared while exporting; it is left as it is")
    if artifact.is_dir():
        os.rename(artifact, destination)
        return
    try:
        os.link(artifact, destination)  # fails if the destination exists: no window to overwrite
    except FileExistsError:
        raise RunError(f"{destination}: appeared while exporting; it is left as it is") from None
    except OSError:  # a file system without hard links
        os.rename(artifact, destination)


def _write_and_verify(format: str, model, reference, precision: str, x, images_from: str, artifact: Path,
                      destination: Path) -> ExportResult:
    """Write `reference` (the model, or its float32 copy) as `format` at `artifact`, load it back and
    check that it agrees with the reference and, for a copy, with the model as trained."""
    portable = reference is not model
    expected = reference.predict(x, verbose=0)  # also builds the copy's call graph, which export needs
    try:
        _write(format, reference, artifact)
    except ImportError as exc:
        raise _missing_packages(format, exc) from None
    except Exception as exc:
        raise ExportError(f"writing the {format} export failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    before_verify(artifact, format)
    try:
        exported = _run(format, artifact, x)
    except ImportError as exc:
        raise _missing_packages(format, exc) from None
    except Exception as exc:
        text = re.sub(r"\{\{.*?\}\}\s*", "", str(exc)).strip()  # TensorFlow's {{function_node ...}} prefix
        first = text.splitlines()[0] if text else ""
        raise ExportError(f"the {format} export cannot be loaded and run: {type(exc).__name__}: {first}; "
                          f"nothing was written to {destination}") from None
    result = ExportResult(destination, format, _size(artifact), len(x), images_from,
                          _largest_difference(exported, expected),
                          TOLERANCES[format], precision)
    if portable:
        result.trained_difference = _largest_difference(exported, model.predict(x, verbose=0))
        result.trained_tolerance = MIXED_TOLERANCES.get(precision, 5e-2)
    if not result.difference <= result.tolerance:
        raise ExportError(f"the {format} export disagrees with the Keras model on {len(x)} {images_from}: "
                          f"largest difference {result.difference:.3g} > tolerance {result.tolerance:g}; "
                          f"nothing was written to {destination}")
    if portable and not result.trained_difference <= result.trained_tolerance:
        raise ExportError(f"the float32 {format} export differs from the model as trained in {precision} by "
                          f"{result.trained_difference:.3g} > tolerance {result.trained_tolerance:g} on "
                          f"{len(x)} {images_from}; nothing was written to {destination}")
    return result


def export(run: str | Path, format: str, out: str | Path | None = None, *, data_dir=None) -> ExportResult:
    """Write the run's best model as `format` at `out` (default <run>/export/model.<ext>), verified."""
    if format not in FORMATS:
        raise RunError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    run_dir = rundir.resolve(run)
    model_path = run_dir / rundir.BEST
    if not model_path.is_file():
        raise RunError(f"{run_dir}: the run has no {rundir.BEST} to export")
    destination = Path(out) if out is not None else default_destination(run_dir, format)
    if os.path.lexists(destination):
        raise RunError(f"{destination}: already exists; export never overwrites (choose another --out, or "
                       "remove it first)")
    rundir.check_output(destination, run_folder=run_dir / "export", create=False)
    if format == "keras" and destination.suffix != ".keras":
        raise RunError(f"{destination}: a Keras model file must end in .keras")

    from cnnctl.config import load_config
    from cnnctl.model import load_model, probability_model

    from_logits = load_config(run_dir / rundir.CONFIG).train.loss.from_logits
    model = load_model(model_path)
    precision = next((layer.dtype_policy.name for layer in model.layers
                      if layer.dtype_policy.name.startswith("mixed")), "float32")
    portable = format != "keras" and precision != "float32"
    trained = probability_model(model, from_logits)  # an export outputs probabilities, also of a logits model
    reference = probability_model(float32_copy(model), from_logits) if portable else trained
    x, images_from = _check_images(run_dir, data_dir, tuple(int(d) for d in model.input_shape[1:]))

    created = [p for p in reversed(destination.parent.parents) if not p.exists()]
    created += [destination.parent] if not destination.parent.exists() else []
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"))
    except OSError as exc:
        raise RunError(f"{destination.parent}: cannot write there: {exc.strerror}") from None
    artifact = work / (f"model{SUFFIXES[format]}" if format != "saved_model" else "saved_model")
    placed = False
    try:
        result = _write_and_verify(format, trained, reference, precision, x, images_from, artifact, destination)
        _place(artifact, destination)
        placed = True
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not placed:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty
