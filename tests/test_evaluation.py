"""cnnctl.evaluation.report on hand-made probabilities, where every number can be worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cnnctl import evaluation

# Eight examples of three classes; the rows are made so that the predictions are
#   true 0: 0 0 0 1    true 1: 1 2    true 2: 2 2
# which gives the confusion matrix [[3, 1, 0], [0, 1, 1], [0, 0, 2]].
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.5, 0.25, 0.25],
    [0.3, 0.6, 0.1],  # true 0, predicted 1 with 0.6
    [0.1, 0.8, 0.1],
    [0.35, 0.2, 0.45],  # true 1, predicted 2 with 0.45; its true class is not even second
    [0.1, 0.1, 0.8],
    [0.0, 0.4, 0.6],
])
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2])
NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def hand_made() -> dict:
    return evaluation.report(PROBABILITIES, LABELS, NAMES, top_k=2)


def test_counts_accuracy_and_the_confusion_matrix(hand_made):
    assert hand_made["examples"] == 8 and hand_made["accuracy"] == 0.75
    assert hand_made["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert hand_made["class_names"] == NAMES


def test_precision_recall_and_f1_per_class(hand_made):
    # precision: of the predictions of a class, the right ones (a column); recall: of a class, the found (a row)
    expected = [("cat", 3 / 3, 3 / 4, 4, 6 / 7), ("dog", 1 / 2, 1 / 2, 2, 1 / 2), ("bird", 2 / 3, 2 / 2, 2, 4 / 5)]
    for got, (name, precision, recall, support, f1) in zip(hand_made["per_class"], expected, strict=True):
        assert got == {"class": name, "precision": pytest.approx(precision), "recall": pytest.approx(recall),
                       "f1": pytest.approx(f1), "support": support}
    assert hand_made["macro_f1"] == pytest.approx((6 / 7 + 1 / 2 + 4 / 5) / 3)


def test_top_k_accuracy_counts_the_true_class_among_the_k_most_probable(hand_made):
    assert hand_made["top_k"] == 2 and hand_made["top_2_accuracy"] == 7 / 8  # example 5's class is third
    top_1 = evaluation.report(PROBABILITIES, LABELS, NAMES, top_k=1)
    assert top_1["top_1_accuracy"] == top_1["accuracy"] == 0.75


def test_top_k_of_at_least_the_class_count_is_k_of_the_class_count():
    report = evaluation.report(PROBABILITIES, LABELS, NAMES, top_k=5)
    assert report["top_k"] == 3 and report["top_3_accuracy"] == 1.0 and "top_5_accuracy" not in report


def test_loss_is_the_mean_crossentropy_of_the_true_class(hand_made):
    picked = [0.7, 0.6, 0.5, 0.3, 0.8, 0.2, 0.8, 0.6]
    assert hand_made["loss"] == pytest.approx(-sum(math.log(p) for p in picked) / 8)


def test_loss_clips_probabilities_like_keras():
    certain_and_wrong = evaluation.report(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 1]), ["a", "b"])
    assert certain_and_wrong["loss"] == pytest.approx(-math.log(evaluation.EPSILON) / 2)  # finite, not inf
    rounding = evaluation.report(np.array([[1.0000002, 0.0]]), np.array([0]), ["a", "b"])
    assert rounding["loss"] == 0.0  # a probability over 1 is clipped to 1, not a negative loss


def test_misclassified_lists_the_mistakes_most_confident_first(hand_made):
    assert hand_made["misclassified"] == [{"index": 3, "true": 0, "predicted": 1, "probability": 0.6},
                                          {"index": 5, "true": 1, "predicted": 2, "probability": 0.45}]


def test_report_misclassified_is_most_confident_first_and_limited():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1, 1])
    report = evaluation.report(probabilities, labels, ["a", "b"], top_k=1, misclassified=2)
    assert report["misclassified"] == [{"index": 2, "true": 0, "predicted": 1, "probability": 0.8},
                                       {"index": 3, "true": 1, "predicted": 0, "probability": 0.7}]
    assert report["accuracy"] == pytest.approx(0.4)


def test_equally_confident_mistakes_keep_their_order_and_none_can_be_asked_for():
    probabilities = np.array([[0.3, 0.7], [0.9, 0.1], [0.3, 0.7], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1])
    report = evaluation.report(probabilities, labels, ["a", "b"])
    assert [m["index"] for m in report["misclassified"]] == [0, 2, 3]
    assert evaluation.report(probabilities, labels, ["a", "b"], misclassified=0)["misclassified"] == []


def test_a_class_never_seen_nor_predicted_scores_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluation.report(np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]), np.array([0, 1]), ["a", "b", "c"])
    assert report["per_class"][2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx(2 / 3)


def test_classes_without_a_name_are_named_by_their_index():
    report = evaluation.report(np.eye(3), np.arange(3), ["zero"])
    assert report["class_names"] == ["zero", "1", "2"]
    assert [c["class"] for c in report["per_class"]] == ["zero", "1", "2"]


def test_labels_may_be_a_column_of_any_integer_type():
    column = evaluation.report(PROBABILITIES, LABELS.astype(np.uint8).reshape(-1, 1), NAMES, top_k=2)
    assert column["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
