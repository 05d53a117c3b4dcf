"""data.augment (issue 18): Keras' preprocessing layers on training batches in the tf.data pipeline.

The layers cnnctl builds, what each augmentation does to a batch, that the draws depend only on
(seed, epoch, step, part), and that evaluation and prediction batches are never augmented; then
`cnnctl train` and `cnnctl export` in this process on a few synthetic images (seconds). Also:
test_layers.py (the argument models against Keras), test_config.py (located errors),
test_data_pipeline.py (resume and worker parts), test_summary.py, test_resume.py (SIGKILL, slow).
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from conftest import tiny_config, write_config

from cnnctl import augment, data, inputs
from cnnctl.data import Splits
from cnnctl.data.memory import aligned
from cnnctl.layers import AUGMENT_TYPES, MIXING
from cnnctl.schema import Config, DataConfig

# Typical arguments of each augmentation: what a config would set.
TYPICAL = {
    "RandomFlip": {"mode": "horizontal"},
    "RandomTranslation": {"height_factor": 0.2, "width_factor": [-0.1, 0.3]},
    "RandomRotation": {"factor": 0.1, "fill_mode": "constant"},
    "RandomZoom": {"height_factor": [-0.2, 0.2]},
    "RandomContrast": {"factor": 0.5},
    "RandomBrightness": {"factor": 0.4},
    "RandomErasing": {"factor": 1.0, "scale": [0.1, 0.4]},
    "MixUp": {"alpha": 0.4},
    "CutMix": {"factor": 1.0},
    "AlternatingFlip": {"mode": "horizontal"},
}
EVERY = [{name: args} for name, args in TYPICAL.items()]  # all ten in a row


def augmentation(*entries) -> list:
    """data.augment of a config with these entries (`{Type: {args}}` or a bare name)."""
    return DataConfig(dataset="synthetic", augment=list(entries)).augment


def arrays(n=16, shape=(6, 6, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = aligned(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    y = aligned((np.arange(n) % classes).astype(np.uint8))
    return x, y


def batches(x, y, entries=(), *, seed=3, one_hot=False, classes=3, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every batch of make_epoch_dataset (batch 4, 2 epochs unless given) augmented by `entries`."""
    kwargs = {"batch_size": 4, "shuffle": True, "epochs": 2, **kwargs}
    dataset = data.make_epoch_dataset(x, y, num_classes=classes, one_hot=one_hot, seed=seed,
                                      augment=augment.make(augmentation(*entries), seed), **kwargs)
    return list(dataset.as_numpy_iterator())


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for x, z in zip(a, b, strict=True) for p, q in zip(x, z, strict=True))


# ---------------------------------------------------------------- the layers


def test_typical_arguments_cover_every_augmentation():
    assert set(TYPICAL) == set(AUGMENT_TYPES)
    assert set(MIXING) <= set(AUGMENT_TYPES)


@pytest.mark.parametrize("name", TYPICAL)
def test_build_makes_the_keras_layer_in_float32_with_images_in_0_1(keras_module, name):
    (layer,) = augment.build(augmentation({name: TYPICAL[name]}))
    assert type(layer) is getattr(keras_module.layers, AUGMENT_TYPES[name][1])
    assert layer.dtype_policy.name == "float32" and layer.compute_dtype == "float32"
    if "value_range" in inspect.signature(type(layer).__init__).parameters:
        assert name in augment.VALUE_RANGE  # every layer that clips or fills to a range is told [0, 1]
        assert tuple(layer.value_range) == (0.0, 1.0)
    else:
        assert name not in augment.VALUE_RANGE


def test_build_stays_float32_under_a_mixed_precision_policy(keras_module):
    before = keras_module.mixed_precision.global_policy()
    keras_module.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layers = augment.build(augmentation(*EVERY))
    finally:
        keras_module.mixed_precision.set_global_policy(before)
    assert [layer.compute_dtype for layer in layers] == ["float32"] * len(EVERY)


def test_the_augmentation_leaves_the_models_initial_weights_alone(keras_module):
    # Keras layers made without a seed take one from Python's random, which the initialisers draw from next.
    from cnnctl.model import build_model

    model = Config.model_validate(tiny_config()).model

    def first_weights(entries):
        keras_module.utils.set_random_seed(5)
        augment.make(augmentation(*entries), 5)
        return build_model(model).get_weights()[0]

    assert np.array_equal(first_weights([]), first_weights(EVERY))


def test_make_without_augmentation_is_none_and_mixes_names_the_label_mixers():
    assert augment.make([], 0) is None
    assert not augment.mixes(augmentation("RandomFlip", {"RandomContrast": {"factor": 0.1}}))
    assert augment.mixes(augmentation("RandomFlip", "CutMix")) and augment.mixes(augmentation("MixUp"))


def test_names_show_what_the_config_set():
    entries = augmentation({"RandomFlip": {"mode": "horizontal"}}, "MixUp",
                           {"RandomTranslation": {"height_factor": [0.1, 0.25], "width_factor": 0.1}})
    assert augment.names(entries) == ["RandomFlip(mode=horizontal)", "MixUp()",
                                      "RandomTranslation(height_factor=[0.1, 0.25], width_factor=0.1)"]


# ---------------------------------------------------------------- determinism


def test_the_same_seed_epoch_and_step_give_the_same_batches_in_two_builds():
    x, y = arrays()
    first = batches(x, y, EVERY, one_hot=True)
    assert len(first) == 8 and same(first, batches(x, y, EVERY, one_hot=True))
    plain = batches(x, y, one_hot=True)
    assert all(not np.allclose(a[0], p[0]) for a, p in zip(first, plain, strict=True))


def test_every_step_and_epoch_draws_anew():
    # One image 16 times and no shuffle: every batch holds the same four images, only the draws differ.
    x = aligned(np.repeat(arrays(1)[0], 16, axis=0))
    y = aligned(np.zeros(16, np.uint8))
    entries = [{"RandomTranslation": {"height_factor": 0.3, "width_factor": 0.3}}, {"RandomContrast": {"factor": 0.5}}]
    got = [images for images, _ in batches(x, y, entries, shuffle=False)]  # epochs 0 and 1, steps 0-3 each
    assert len(got) == 8
    assert all(not np.allclose(got[i], got[j]) for i in range(8) for j in range(i))


def test_another_seed_draws_otherwise():
    x, y = arrays()
    entries = [{"RandomRotation": {"factor": 0.2}}]
    one = batches(x, y, entries, seed=3, shuffle=False)
    assert same(one, batches(x, y, entries, seed=3, shuffle=False))
    other = batches(x, y, entries, seed=4, shuffle=False)
    assert all(not np.allclose(a[0], b[0]) for a, b in zip(one, other, strict=True))


def test_layers_in_a_chain_draw_independently():
    # Two identical flips in a row would undo each other if they drew the same numbers.
    x = aligned(np.repeat(np.arange(6, dtype=np.uint8).reshape(1, 1, 6, 1) * 40, 16, axis=0))
    y = aligned(np.zeros(16, np.uint8))
    (images, _), *_ = batches(x, y, ["RandomFlip", "RandomFlip"], shuffle=False, batch_size=16, epochs=1)
    plain = x[0] / 255.0
    flipped = [not np.allclose(image, plain) for image in images]
    assert 0 < sum(flipped) < 16


# ---------------------------------------------------------------- what each one does


def test_a_horizontal_flip_mirrors_some_images_of_a_batch_left_to_right():
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 30, (5, 1))[None, :, :, None]  # dark left, bright right
    x, y = aligned(np.repeat(ramp, 16, axis=0)), aligned(np.zeros(16, np.uint8))
    (images, _), *_ = batches(x, y, [{"RandomFlip": {"mode": "horizontal"}}], batch_size=16, epochs=1)
    plain, mirrored = ramp[0] / 255.0, ramp[0, :, ::-1] / 255.0
    kinds = [("plain" if np.allclose(i, plain) else "mirrored" if np.allclose(i, mirrored) else "other")
             for i in images]
    assert "other" not in kinds  # left-right only: never upside down, nothing else changed
    assert 0 < kinds.count("mirrored") < 16, kinds


def flip_states(entries, *, seed=3, epochs=3, **kwargs) -> dict[int, list[bool]]:
    """Image -> whether it came out mirrored in each epoch (images told apart by their label)."""
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 30, (5, 1))[None, :, :, None]
    x, y = aligned(np.repeat(ramp, 16, axis=0)), aligned(np.arange(16, dtype=np.uint8))
    states: dict[int, list[bool]] = {}
    for images, labels in batches(x, y, entries, seed=seed, classes=16, epochs=epochs, **kwargs):
        for image, label in zip(images, labels, strict=True):
            assert np.allclose(image, ramp[0] / 255.0) or np.allclose(image, ramp[0, :, ::-1] / 255.0)
            states.setdefault(int(label), []).append(bool(np.allclose(image, ramp[0, :, ::-1] / 255.0)))
    return states


def test_an_alternating_flip_mirrors_each_image_every_other_epoch():
    states = flip_states(["AlternatingFlip"])  # by default left-right only (flip_states checks)
    assert sorted(states) == list(range(16))
    assert all(s == [s[0], not s[0], s[0]] for s in states.values()), states  # shuffled batches: still per image
    assert 3 <= sum(s[0] for s in states.values()) <= 13  # the first epoch's side is drawn per image
    assert states == flip_states([{"AlternatingFlip": {"mode": "horizontal"}}], batch_size=5)  # not per batch
    assert states != flip_states([{"AlternatingFlip": {"mode": "horizontal"}}], seed=4)


def test_a_translation_moves_the_content():
    dot = np.zeros((1, 9, 9, 1), np.uint8)
    dot[0, 4, 4] = 255
    x, y = aligned(np.repeat(dot, 16, axis=0)), aligned(np.zeros(16, np.uint8))
    entries = [{"RandomTranslation": {"height_factor": 0.3, "width_factor": 0.3, "fill_mode": "constant",
                                      "interpolation": "nearest"}}]
    (images, _), *_ = batches(x, y, entries, batch_size=16, epochs=1)
    assert images.dtype == np.float32 and images.max() <= 1.0
    where = [np.unravel_index(image[:, :, 0].argmax(), (9, 9)) for image in images if image.max() == 1.0]
    assert len(where) >= 8  # shifts of up to 2.7 pixels keep the dot in the picture (nearest: whole pixels)
    assert sum(w != (4, 4) for w in where) >= len(where) // 2
    assert all(np.count_nonzero(image) <= 1 for image in images)  # moved, not smeared


@pytest.mark.parametrize("name", ["RandomContrast", "RandomBrightness", "RandomErasing"])
def test_intensity_changes_keep_images_float32_in_0_1(name):
    x, y = arrays(32, (8, 8, 3))
    args = {"factor": 1.0} if name != "RandomErasing" else {"factor": 1.0, "scale": [0.3, 0.6]}
    got = batches(x, y, [{name: args}], batch_size=32, epochs=1)
    plain = batches(x, y, batch_size=32, epochs=1)
    for (images, labels), (before, same_labels) in zip(got, plain, strict=True):
        assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
        assert not np.allclose(images, before) and np.array_equal(labels, same_labels)


def class_images(n=16, values=(51, 128, 230), size=6):
    """Images that are one value all over, the value of their class: a mix shows its weights in its pixels."""
    y = (np.arange(n) % len(values)).astype(np.uint8)
    x = np.broadcast_to(np.array(values, np.uint8)[y][:, None, None, None], (n, size, size, 1))
    return aligned(np.ascontiguousarray(x)), aligned(y), np.array(values) / 255.0


@pytest.mark.parametrize("name", MIXING)
def test_mixing_gives_soft_labels_that_match_the_mixed_images(name):
    x, y, values = class_images()
    got = batches(x, y, [name], one_hot=True, batch_size=16)
    soft = 0
    for images, labels in got:
        assert images.dtype == np.float32 and labels.dtype == np.float32 and labels.shape == (16, 3)
        assert np.allclose(labels.sum(axis=1), 1.0) and labels.min() >= 0.0
        soft += int(np.sum(labels.max(axis=1) < 0.99))
        for image, label in zip(images, labels, strict=True):
            if name == "MixUp":  # the whole image is the labels' blend of the two classes' values
                assert np.allclose(image, label @ values, atol=1e-5)
            else:  # a box of another image pasted in: each pixel is one of the mixed classes' values
                mixed = values[label > 0]
                assert np.all(np.isclose(image[..., None], mixed, atol=1e-6).any(axis=-1))
                assert abs(image.mean() - label @ values) < 0.15  # Keras weighs by the box's area before pixels
    assert soft >= 4  # most mixes are visible


# ---------------------------------------------------------------- training batches only


def splits(n=24, shape=(6, 6, 1)) -> Splits:
    x, y = arrays(n, shape)
    return Splits(x_train=x, y_train=y, x_val=x[:8], y_val=y[:8], x_test=x[:8], y_test=y[:8],
                  class_names=["a", "b", "c"], identity={})


def config_with(entries, **changes) -> Config:
    return Config.model_validate(tiny_config(input_shape=(6, 6, 1), data={"dataset": "synthetic", "augment": entries},
                                             train={"batch_size": 4}, **changes))


def test_evaluation_and_prediction_batches_are_never_augmented():
    assert "augment" not in inspect.signature(data.make_dataset).parameters
    parts = splits()
    config = config_with([{"RandomTranslation": {"height_factor": 0.3, "width_factor": 0.3}}, "RandomFlip"])
    val = list(inputs.validation(config, parts, one_hot=False).as_numpy_iterator())
    assert np.allclose(np.concatenate([images for images, _ in val]), parts.x_val / 255.0)
    assert np.array_equal(np.concatenate([labels for _, labels in val]), parts.y_val)


def test_training_batches_are_augmented_and_only_those():
    parts = splits()
    config = config_with([{"RandomTranslation": {"height_factor": 0.3, "width_factor": 0.3}}])
    plain_config = config_with([])
    args = {"one_hot": False, "class_weight": None, "strategy": None, "distribute": "none"}
    _, epochs_from = inputs.training(config, parts, **args)
    _, plain_from = inputs.training(plain_config, parts, **args)
    augmented = list(epochs_from(0, epochs=1).as_numpy_iterator())
    plain = list(plain_from(0, epochs=1).as_numpy_iterator())
    assert len(augmented) == len(plain) == 6
    for (images, labels), (before, same_labels) in zip(augmented, plain, strict=True):
        assert not np.allclose(images, before) and np.array_equal(labels, same_labels)  # the same examples, moved
    assert same(plain, list(data.make_epoch_dataset(
        parts.x_train, parts.y_train, batch_size=4, num_classes=3, one_hot=False, shuffle=True, seed=plain_config.seed,
        epochs=1).as_numpy_iterator()))  # no data.augment: the batches they always were


@pytest.mark.parametrize("name", TYPICAL)
def test_a_batch_of_one_and_an_empty_part_are_augmented_too(name):
    # 9 examples in batches of 4 end with a batch of 1; split between two replicas, its second part is empty.
    x, y = arrays(9)
    got = batches(x, y, [{name: TYPICAL[name]}], one_hot=True, epochs=1, shard=(0, 1, 2))
    assert [len(images) for images, _ in got] == [2, 2, 2, 2, 1, 0]
    assert all(images.dtype == np.float32 and labels.shape == (len(images), 3) for images, labels in got)


# ---------------------------------------------------------------- end to end: train, best.keras, export


AUGMENTED_RUN = tiny_config(
    name="augmented", seed=4, input_shape=(10, 10, 1),
    data={"synthetic": {"train_examples": 96, "test_examples": 32},
          "augment": [{"RandomFlip": {"mode": "horizontal"}},
                      {"RandomTranslation": {"height_factor": 0.1, "width_factor": 0.1}}, {"MixUp": {"alpha": 0.4}}]},
    train={"loss": "categorical_crossentropy", "epochs": 2, "validation": "test"},
    runtime={"precision": "float32"})
MODEL_LAYERS = ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]


def train(root, config: dict, name: str, *extra: str):
    """`cnnctl train` in this process; the run's directory."""
    from typer.testing import CliRunner

    from cnnctl.cli import app

    path = write_config(root / f"{name}.yaml", config)
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(root / "runs"), "--run-name", name,
                                      "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return root / "runs" / name


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("augment"), AUGMENTED_RUN, "augmented")


def test_an_augmented_run_trains_and_saves_only_the_model(augmented_run, keras_module):
    from cnnctl.config import load_config
    from cnnctl.model import build_model, load_model

    manifest = json.loads((augmented_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["epochs_run"] == 2
    config = load_config(augmented_run / "config.yaml")
    assert [entry.type for entry in config.data.augment] == ["RandomFlip", "RandomTranslation", "MixUp"]
    rows = (augmented_run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_accuracy" in rows[0]
    best = load_model(augmented_run / "checkpoints" / "best.keras")
    assert [type(layer).__name__ for layer in best.layers] == MODEL_LAYERS  # no augmentation layer in the model
    assert best.count_params() == build_model(config.model).count_params()
    assert json.loads((augmented_run / "eval.json").read_text())["accuracy"] >= 0
    assert "Augmentation (training batches only" in (augmented_run / "summary.txt").read_text()


@pytest.mark.parametrize("format", ["keras", "saved_model"])
def test_the_export_of_an_augmented_run_agrees_with_its_model(cli, augmented_run, tmp_path, format):
    out = tmp_path / ("model.keras" if format == "keras" else "saved_model")
    result = cli("export", augmented_run, "--format", format, "--out", out)
    assert result.exit_code == 0, result.output
    assert "checked    32 test images: largest difference" in result.output


def test_label_mixing_trains_with_the_default_sparse_loss(tmp_path):
    # MixUp and CutMix make soft labels: the run gives the pipeline one-hot labels and Keras the categorical loss.
    config = {**AUGMENTED_RUN, "data": {**AUGMENTED_RUN["data"], "augment": ["CutMix", "MixUp"]},
              "train": {**AUGMENTED_RUN["train"], "epochs": 1, "validation": "split", "metrics": ["accuracy", "top_k_accuracy"],
                        "top_k": 2}}
    del config["train"]["loss"]
    run = train(tmp_path, config, "mixed")
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val_top_k_accuracy" in header


def test_the_json_schema_knows_the_augmentations(cli):
    jsonschema = pytest.importorskip("jsonschema")
    result = cli("schema")
    assert result.exit_code == 0, result.output
    validator = jsonschema.Draft202012Validator(json.loads(result.stdout))
    document = {**AUGMENTED_RUN, "data": {**AUGMENTED_RUN["data"], "augment": [{name: args} for name, args in TYPICAL.items()]}}
    assert list(validator.iter_errors(document)) == []
    for bad in ({"RandomTranslation": {"height_factor": 2, "width_factor": 0.1}}, {"RandomFlip": {"mode": "diagonal"}},
                {"Conv2D": {"filters": 1, "kernel_size": 1}}, {"CutMix": {"factor": 1.5}}):
        assert list(validator.iter_errors({**document, "data": {"dataset": "synthetic", "augment": [bad]}})), bad


def test_resume_refuses_to_change_the_augmentation(cli, augmented_run):
    result = cli("train", "--resume", augmented_run, "--set", "data.augment=[RandomFlip]")
    assert result.exit_code == 2
    assert "--resume cannot change data.augment" in " ".join(result.output.split())
