"""Optimizers and learning-rate schedules built from the config, as Keras computes them; the loss and the
form of the labels; class weights."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl.compile import (
    class_weight_fields,
    class_weights,
    describe_class_weights,
    labels_one_hot,
    make_loss,
    make_metrics,
    make_optimizer,
    run_class_weights,
    with_class_weights,
)
from cnnctl.errors import ConfigError, DataError
from cnnctl.schema import OptimizerConfig, TrainConfig


def rate_at(optimizer, step: int) -> float:
    schedule = optimizer._learning_rate  # a LearningRateSchedule or a variable
    return float(schedule(step)) if callable(schedule) else float(schedule.numpy())


def test_constant_and_plain_learning_rate():
    assert rate_at(make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.01), 10, 5), 0) == pytest.approx(0.01)
    config = OptimizerConfig(name="sgd", learning_rate=0.01, schedule={"type": "constant"})
    assert rate_at(make_optimizer(config, 10, 5), 40) == pytest.approx(0.01)


def test_inverse_time_is_keras2_legacy_decay():
    # Keras 2's Adam(lr=1e-4, decay=1e-6): lr / (1 + 1e-6 * iterations)
    config = OptimizerConfig(name="adam", learning_rate=1e-4,
                             schedule={"type": "inverse_time", "decay_rate": 1e-6, "decay_steps": 1})
    optimizer = make_optimizer(config, 391, 50)
    assert rate_at(optimizer, 100_000) == pytest.approx(1e-4 / (1 + 1e-6 * 100_000))


def test_exponential_and_cosine():
    config = OptimizerConfig(name="rmsprop", learning_rate=0.1,
                             schedule={"type": "exponential", "decay_rate": 0.5, "decay_steps": 10})
    assert rate_at(make_optimizer(config, 10, 5), 20) == pytest.approx(0.025)
    cosine = OptimizerConfig(name="adam", learning_rate=0.1, schedule={"type": "cosine"})
    optimizer = make_optimizer(cosine, 10, 5)  # decays over the whole run: 50 steps
    assert rate_at(optimizer, 0) == pytest.approx(0.1)
    assert rate_at(optimizer, 25) == pytest.approx(0.05)
    assert rate_at(optimizer, 50) == pytest.approx(0.0, abs=1e-7)


def test_optimizer_arguments_reach_keras():
    optimizer = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True), 1, 1)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov is True


# ---------------------------------------------------------------- class weights

NAMES = ["cat", "dog", "bird"]


def balanced(y, n_classes):
    """scikit-learn's compute_class_weight("balanced", classes=range(n), y=y), written out by hand."""
    return [len(y) / (n_classes * np.sum(y == c)) for c in range(n_classes)]


def test_auto_is_scikit_learns_balanced_weights():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1, dtype=np.uint8)
    weights = class_weights("auto", y, NAMES)
    assert list(weights) == [0, 1, 2]  # every index: Keras looks weights up in a table of max(key) + 1
    assert list(weights.values()) == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert list(weights.values()) == pytest.approx(balanced(y, 3))
    assert all(type(w) is float for w in weights.values())
    # the weights make every class count as much: the mean weight of the training examples is 1
    assert np.mean([weights[c] for c in y]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    y = rng.choice(7, 1000, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.04, 0.01])
    assert list(class_weights("auto", y, list("abcdefg")).values()) == pytest.approx(balanced(y, 7))


def test_a_mapping_weighs_classes_by_name_and_the_others_one():
    y = np.array([0, 1, 2])
    assert class_weights({"dog": 2.5}, y, NAMES) == {0: 1.0, 1: 2.5, 2: 1.0}
    assert class_weights({}, y, NAMES) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert class_weights(None, y, NAMES) is None


def test_an_unknown_class_name_is_one_problem_each_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        class_weights({"dgo": 2.0, "dog": 3.0, "zebra": 1.5}, np.array([0, 1, 2]), NAMES)
    assert caught.value.problems == [
        "train.class_weight: no class named 'dgo' (classes: cat, dog, bird; did you mean 'dog'?)",
        "train.class_weight: no class named 'zebra' (classes: cat, dog, bird)",
    ]
    assert caught.value.exit_code == 2


def test_the_class_list_of_a_message_is_bounded():
    names = [f"class{i:04d}" for i in range(1000)]
    with pytest.raises(ConfigError) as caught:
        class_weights({"class0500x": 2.0}, np.arange(1000), names)
    message = caught.value.message
    assert len(message) < 400 and "… (988 more)" in message and message.endswith("did you mean 'class0500'?)")


def test_auto_refuses_a_class_without_training_images_naming_it():
    with pytest.raises(DataError) as caught:
        class_weights("auto", np.array([0, 0, 2, 2, 2]), NAMES)
    assert caught.value.message == ("train.class_weight: auto weighs each class by its count among the 5 training "
                                    "images, and class 'dog' has none")
    assert caught.value.exit_code == 2 and "by class name" in caught.value.hint
    with pytest.raises(DataError, match="classes cat, bird have none"):
        class_weights("auto", np.array([1, 1]), NAMES)
    assert class_weights({"cat": 2.0}, np.array([1, 1]), NAMES) == {0: 2.0, 1: 1.0, 2: 1.0}  # a mapping may


def test_the_manifest_record_and_the_log_line():
    weights = {0: 0.5, 1: 4 / 3, 2: 4.0}
    assert class_weight_fields("auto", weights, NAMES) == {
        "class_weight": {"cat": 0.5, "dog": 4 / 3, "bird": 4.0}, "class_weight_mode": "auto"}
    assert class_weight_fields({"dog": 2.0}, {0: 1.0, 1: 2.0, 2: 1.0}, NAMES)["class_weight_mode"] == "given"
    assert class_weight_fields(None, None, NAMES) == {"class_weight": None, "class_weight_mode": None}
    assert describe_class_weights("auto", weights, NAMES) == "class weights (auto): cat 0.5, dog 1.33, bird 4"
    many = {c: 1.0 + c / 100 for c in range(100)}
    line = describe_class_weights({"c0": 1.0}, many, [f"c{i}" for i in range(100)])
    assert line.startswith("class weights (given): c0 1, c1 1.01,") and line.endswith("… (100 classes, 1 to 1.99)")
    assert len(line) < 200


def test_run_class_weights_logs_only_a_weighted_run():
    lines = []
    weights, fields = run_class_weights("auto", np.array([0, 0, 1, 2]), NAMES, lines.append)
    assert weights == {0: 4 / 6, 1: 4 / 3, 2: 4 / 3} and fields["class_weight"]["cat"] == 4 / 6
    assert lines == ["class weights (auto): cat 0.667, dog 1.33, bird 1.33"]
    assert run_class_weights(None, np.array([0]), NAMES, lines.append) == (None, class_weight_fields(None, None, NAMES))
    assert len(lines) == 1


@pytest.mark.parametrize("one_hot", [False, True])
def test_with_class_weights_adds_each_examples_weight(one_hot):
    import tensorflow as tf

    labels = np.array([2, 0, 1, 2, 2], dtype=np.int32)
    y = tf.one_hot(labels, 3) if one_hot else tf.constant(labels)
    dataset = tf.data.Dataset.from_tensor_slices((tf.zeros((5, 2)), y)).batch(2)
    assert with_class_weights(dataset, None) is dataset
    batches = list(with_class_weights(dataset, {0: 0.5, 1: 2.0, 2: 3.0}).as_numpy_iterator())
    assert [len(batch) for batch in batches] == [3, 3, 3]
    assert np.concatenate([batch[2] for batch in batches]).tolist() == [3.0, 0.5, 2.0, 3.0, 3.0]
    assert batches[0][2].dtype == np.float32


@pytest.mark.parametrize("one_hot", [False, True])
def test_a_weighted_fit_loss_is_mean_weight_times_loss_as_with_keras_class_weight(keras_module, one_hot):
    """Keras applies fit(class_weight=) to one-hot labels too (argmax), and under steps_per_execution; our
    weights give the same loss, sum(weight * loss) / batch size, not / sum(weight)."""
    import tensorflow as tf

    keras = keras_module
    rng = np.random.default_rng(0)
    x = rng.random((32, 5), dtype=np.float32)
    labels = rng.choice(3, 32, p=[0.7, 0.2, 0.1]).astype(np.int32)
    weights = class_weights("auto", labels, NAMES)
    y = tf.one_hot(labels, 3) if one_hot else tf.constant(labels)
    loss = "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"

    def first_epoch_loss(ours: bool) -> float:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, steps_per_execution=2)  # weights stay put
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        dataset = with_class_weights(dataset, weights) if ours else dataset
        history = model.fit(dataset, epochs=1, class_weight=None if ours else weights, shuffle=False, verbose=0)
        probabilities = np.asarray(model(x), dtype=np.float64)
        by_hand = np.mean([weights[c] * -np.log(probabilities[i, c]) for i, c in enumerate(labels)])
        assert history.history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
        return history.history["loss"][0]

    assert first_epoch_loss(ours=True) == pytest.approx(first_epoch_loss(ours=False), rel=1e-6)


# ---------------------------------------------------------------- the loss and the labels


def train_with(loss) -> TrainConfig:
    return TrainConfig(optimizer={"name": "sgd"}, loss=loss, metrics=["accuracy", "top_k_accuracy"], top_k=2)


@pytest.mark.parametrize(("loss", "mixes", "one_hot"), [
    ("sparse_categorical_crossentropy", False, False),
    ("categorical_crossentropy", False, True),
    ({"name": "sparse_categorical_crossentropy", "from_logits": True}, False, False),
    ({"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1}, False, True),
    ("sparse_categorical_crossentropy", True, True),  # MixUp / CutMix mix the labels too
])
def test_labels_are_one_hot_for_the_categorical_loss_smoothing_or_mixing(loss, mixes, one_hot):
    assert labels_one_hot(train_with(loss), augment_mixes=mixes) is one_hot


def test_a_loss_without_options_reaches_keras_by_its_name_as_before():
    assert make_loss(train_with("categorical_crossentropy"), True) == "categorical_crossentropy"
    assert make_loss(train_with("sparse_categorical_crossentropy"), False) == "sparse_categorical_crossentropy"
    assert make_loss(train_with("sparse_categorical_crossentropy"), True) == "categorical_crossentropy"  # mixed


def test_loss_options_reach_keras(keras_module):
    keras = keras_module
    loss = make_loss(train_with({"name": "categorical_crossentropy", "from_logits": True, "label_smoothing": 0.2}),
                     True)
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    assert loss.get_config()["from_logits"] is True and loss.get_config()["label_smoothing"] == pytest.approx(0.2)
    sparse = make_loss(train_with({"name": "sparse_categorical_crossentropy", "from_logits": True}), False)
    assert isinstance(sparse, keras.losses.SparseCategoricalCrossentropy) and sparse.get_config()["from_logits"]
    with pytest.raises(ValueError, match="label smoothing needs one-hot labels"):
        make_loss(train_with({"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1}), False)


@pytest.mark.parametrize("from_logits", [False, True])
def test_label_smoothing_of_integer_labels_is_keras_categorical_smoothing_of_one_hot_rows(keras_module, from_logits):
    """Integer labels through the pipeline (one-hot per batch) and the loss make_loss gives: the same number as
    Keras' CategoricalCrossentropy(label_smoothing) on one-hot labels, and as the formula by hand."""
    from cnnctl.data import make_dataset

    keras, classes, smoothing = keras_module, 4, 0.2
    train = train_with({"name": "sparse_categorical_crossentropy", "label_smoothing": smoothing,
                        "from_logits": from_logits})
    one_hot = labels_one_hot(train)
    rng = np.random.default_rng(3)
    y = rng.integers(0, classes, 10).astype(np.uint8)
    _, labels = next(iter(make_dataset(np.zeros((10, 2, 2, 1), np.uint8), y, batch_size=10, num_classes=classes,
                                       one_hot=one_hot)))
    scores = rng.normal(size=(10, classes)).astype(np.float32)
    probabilities = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    outputs = scores if from_logits else probabilities
    ours = float(make_loss(train, one_hot)(labels, outputs))
    keras_smoothing = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing, from_logits=from_logits)
    assert ours == pytest.approx(float(keras_smoothing(keras.ops.one_hot(y, classes), outputs)), abs=1e-6)
    smoothed = np.eye(classes)[y] * (1 - smoothing) + smoothing / classes
    by_hand = float(np.mean(-(smoothed * np.log(probabilities.astype(np.float64))).sum(axis=1)))
    assert ours == pytest.approx(by_hand, abs=1e-5)
    hard = float(keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)(y, outputs))
    assert abs(ours - hard) > 0.01  # smoothing changed the loss


def test_top_k_accuracy_follows_the_form_of_the_labels(keras_module):
    keras = keras_module
    train = train_with({"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1})
    assert isinstance(make_metrics(train)[1], keras.metrics.TopKCategoricalAccuracy)
    assert isinstance(make_metrics(train, False)[1], keras.metrics.SparseTopKCategoricalAccuracy)
    assert make_metrics(train_with("categorical_crossentropy"))[0] == "accuracy"

