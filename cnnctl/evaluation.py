"""The evaluation report: loss, accuracy, top-k, per-class precision / recall / F1, confusion matrix.

Everything is computed from one pass of predictions over the test split, in NumPy, so the numbers
are exactly reproducible from the stored probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EPSILON = 1e-7  # Keras' clipping of probabilities in crossentropy
MISCLASSIFIED = 100  # mistakes listed in a report (for plots/misclassified.png), most confident first


def report(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], top_k: int = 5,
           misclassified: int = MISCLASSIFIED) -> dict:
    """Metrics of predicted class probabilities (N, C) against integer labels (N,).

    `misclassified` lists up to that many wrong predictions, {index into the test split, true,
    predicted, probability of the predicted class}, the most confident first.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    n, num_classes = probabilities.shape
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(n), labels], EPSILON, 1.0)
    k = min(top_k, num_classes)
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k] if k < num_classes else None
    top_k_accuracy = 1.0 if top is None else float((top == labels[:, None]).any(axis=1).mean())

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = [
        {"class": class_names[i] if i < len(class_names) else str(i), "precision": float(precision[i]),
         "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in range(num_classes)
    ]
    return {
        "examples": int(n),
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((predicted == labels).mean()),
        f"top_{k}_accuracy": top_k_accuracy,
        "top_k": k,
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "class_names": [c["class"] for c in per_class],
        "confusion_matrix": confusion.tolist(),
        "misclassified": _mistakes(probabilities, labels, predicted, misclassified),
    }


def _mistakes(probabilities: np.ndarray, labels: np.ndarray, predicted: np.ndarray, limit: int) -> list[dict]:
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "probability": round(float(probabilities[i, predicted[i]]), 6)} for i in order]


def evaluate(target, *, config_path=None, data_dir=None) -> tuple[dict, Path]:
    """Evaluate a run's best checkpoint (or a .keras file plus its config) on the test split.

    Returns the report and where it belongs: the run's eval.json, or next to a bare model file.
    """
    from cnnctl import data, rundir
    from cnnctl.config import load_config
    from cnnctl.errors import RunError
    from cnnctl.model import load_model
    from cnnctl.runs import test_split
    from cnnctl.shapes import output_units

    target = Path(target)
    if target.is_dir():
        run_dir = rundir.resolve(target)
        model = load_model(run_dir / rundir.BEST)
        config, splits = test_split(run_dir, data_dir=data_dir, config_path=config_path)
        manifest = run_dir / rundir.MANIFEST
        class_names = (rundir.read_json(manifest).get("class_names") if manifest.is_file() else None) \
            or splits.class_names
        model_path, default_out = run_dir / rundir.BEST, run_dir / rundir.EVAL
    else:
        if config_path is None:
            raise RunError(f"{target}: a model file needs --config CONFIG (its data and class names)")
        model, config = load_model(target), load_config(config_path)
        splits = data.load_splits(config.data, input_shape=config.model.input_shape,
                                  num_classes=output_units(config.model), validation="none",
                                  validation_split=config.train.validation_split, seed=config.seed,
                                  data_dir=data_dir)
        class_names, model_path, default_out = splits.class_names, target, target.with_suffix(".eval.json")
    got, expected = tuple(int(d) for d in model.input_shape[1:]), tuple(config.model.input_shape)
    if got != expected or int(model.output_shape[-1]) != len(class_names):
        raise RunError(f"{model_path}: the model maps {got} to {int(model.output_shape[-1])} classes; the config's "
                       f"data has shape {expected} and {len(class_names)} classes")
    test_ds = data.make_dataset(splits.x_test, splits.y_test, batch_size=config.train.batch_size,
                                num_classes=len(class_names), one_hot=False, shuffle=False, seed=config.seed)
    probabilities = model.predict(test_ds, verbose=0)
    result = report(probabilities, splits.y_test, class_names, config.train.top_k)
    result.update(checkpoint=str(model_path), dataset=splits.identity)
    return result, default_out
