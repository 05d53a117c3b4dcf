"""The evaluation report: loss, accuracy, top-k, per-class precision / recall / F1, confusion matrix.

Everything is computed from one pass of predictions over the test split, in NumPy, so the numbers
are exactly reproducible from the stored probabilities. NumPy only: no TensorFlow here.
"""

from __future__ import annotations

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
