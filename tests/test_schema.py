"""cnnctl.schema: the config classes themselves (defaults, frozen, no unknown keys) and the JSON Schema."""

from __future__ import annotations

import inspect

import pytest
from conftest import tiny_config
from pydantic import ValidationError

from cnnctl import schema
from cnnctl.schema import Config, OptimizerConfig, TrainConfig

SECTIONS = [cls for cls in vars(schema).values()
            if inspect.isclass(cls) and issubclass(cls, schema.Section) and cls is not schema.Section]


@pytest.fixture(scope="module")
def json_schema() -> dict:
    return schema.json_schema()


# ---------------------------------------------------------------- the classes


def test_what_a_config_leaves_out_gets_its_default():
    config = Config.model_validate(tiny_config())
    assert (config.seed, config.description, config.expect) == (0, None, None)
    assert config.data.synthetic.model_dump() == {"train_examples": 512, "test_examples": 128}
    assert (config.data.root, config.data.num_classes, config.data.cache) == (None, None, True)
    train = config.train
    assert (train.loss.model_dump(), train.metrics, train.top_k, train.epochs, train.checkpoint_every_steps) == (
        {"name": "sparse_categorical_crossentropy", "from_logits": False, "label_smoothing": 0.0}, ["accuracy"], 5,
        1, None)
    assert config.evaluate is None
    assert (train.validation, train.validation_split, train.monitor, train.shuffle) == (
        "none", 0.2, "val_accuracy", True)
    assert train.callbacks.model_dump() == {"early_stopping": None, "reduce_lr_on_plateau": None,
                                            "terminate_on_nan": True}
    assert config.runtime.model_dump() == {"device": "auto", "precision": "auto", "jit_compile": "auto",
                                           "distribute": "none", "devices": None, "deterministic": False,
                                           "steps_per_execution": "auto"}
    assert OptimizerConfig(name="adam").learning_rate == 0.001


def test_a_section_given_empty_gets_the_defaults_of_its_keys():
    train = TrainConfig(optimizer={"name": "sgd"}, validation="test", callbacks={"early_stopping": {}})
    assert train.callbacks.early_stopping.model_dump() == {
        "monitor": "val_loss", "min_delta": 0.0, "patience": 0, "mode": "auto", "restore_best_weights": False,
        "start_from_epoch": 0}


@pytest.mark.parametrize("section", SECTIONS, ids=lambda cls: cls.__name__)
def test_every_section_is_frozen_and_refuses_unknown_keys(section):
    assert section.model_config["frozen"] and section.model_config["extra"] == "forbid"


def test_a_loaded_config_cannot_be_changed():
    config = Config.model_validate(tiny_config())
    with pytest.raises(ValidationError, match="frozen"):
        config.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        config.train.optimizer.learning_rate = 1.0
    assert config.name == "tiny" and config.train.optimizer.learning_rate == 0.01


@pytest.mark.parametrize(("changes", "where"), [
    ({"colour": "red"}, ("colour",)),
    ({"train": {"epoch": 2}}, ("train", "epoch")),
    ({"runtime": {"devise": "cpu"}}, ("runtime", "devise")),
    ({"data": {"synthetic": {"examples": 4}}}, ("data", "synthetic", "examples")),
])
def test_unknown_keys_are_refused_where_they_are(changes, where):
    with pytest.raises(ValidationError) as info:
        Config.model_validate(tiny_config(**changes))
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("extra_forbidden", where)]


@pytest.mark.parametrize(("monitor", "refused"), [("val_loss", True), ("val_accuracy", True), ("loss", False)])
def test_a_callback_monitoring_validation_needs_validation(monitor, refused):
    callbacks = {"reduce_lr_on_plateau": {"monitor": monitor}}
    if refused:
        with pytest.raises(ValidationError, match=f"callbacks.reduce_lr_on_plateau monitors '{monitor}' but"):
            TrainConfig(optimizer={"name": "sgd"}, callbacks=callbacks)
    else:
        assert TrainConfig(optimizer={"name": "sgd"}, callbacks=callbacks).validation == "none"
    assert TrainConfig(optimizer={"name": "sgd"}, callbacks=callbacks, validation="split").validation == "split"


def test_optimizer_keras_kwargs_are_exactly_what_was_set():
    optimizer = OptimizerConfig(name="rmsprop", learning_rate=0.01, rho=0.8, centered=True)
    assert optimizer.keras_kwargs() == {"rho": 0.8, "centered": True}


@pytest.mark.parametrize("written", ["categorical_crossentropy", {"name": "categorical_crossentropy"},
                                     {"name": "categorical_crossentropy", "from_logits": False}])
def test_a_loss_name_is_the_mapping_of_that_name_and_is_written_back_as_the_name(written):
    train = TrainConfig(optimizer={"name": "sgd"}, loss=written)
    assert train.loss == schema.LossConfig(name="categorical_crossentropy") and train.loss.plain
    assert train.model_dump()["loss"] == "categorical_crossentropy"


def test_a_loss_with_options_is_written_back_whole_and_reads_back_the_same():
    train = TrainConfig(optimizer={"name": "sgd"}, loss={"name": "sparse_categorical_crossentropy",
                                                         "label_smoothing": 0.2, "from_logits": True})
    assert (train.loss.name, train.loss.from_logits, train.loss.label_smoothing, train.loss.plain) == (
        "sparse_categorical_crossentropy", True, 0.2, False)
    dumped = train.model_dump(mode="json")["loss"]
    assert dumped == {"name": "sparse_categorical_crossentropy", "from_logits": True, "label_smoothing": 0.2}
    assert TrainConfig(optimizer={"name": "sgd"}, loss=dumped) == train


@pytest.mark.parametrize(("loss", "error"), [
    ("crossentropy", ("literal_error", ("loss",))),
    ({"name": "hinge"}, ("literal_error", ("loss", "name"))),
    ({"name": "categorical_crossentropy", "label_smoothing": 1.0}, ("less_than", ("loss", "label_smoothing"))),
    ({"name": "categorical_crossentropy", "label_smoothing": -0.1},
     ("greater_than_equal", ("loss", "label_smoothing"))),
    ({"from_logits": True}, ("missing", ("loss", "name"))),
    ({"name": "categorical_crossentropy", "smoothing": 0.1}, ("extra_forbidden", ("loss", "smoothing"))),
    (3, ("value_error", ("loss",))),
])
def test_bad_losses_are_refused_where_they_are(loss, error):
    with pytest.raises(ValidationError) as info:
        TrainConfig(optimizer={"name": "sgd"}, loss=loss)
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [error]


def test_the_evaluate_section_lists_views_once():
    assert schema.EvaluateConfig().model_dump() == {"tta": [], "translate_pixels": 1}
    assert schema.EvaluateConfig(tta=["translate", "flip"]).tta == ["translate", "flip"]
    for bad in (["flip", "flip"], ["rotate"]):
        with pytest.raises(ValidationError):
            schema.EvaluateConfig(tta=bad)
    with pytest.raises(ValidationError):
        schema.EvaluateConfig(translate_pixels=0)


# ---------------------------------------------------------------- the JSON Schema


def test_the_json_schema_has_every_top_level_section(json_schema):
    assert json_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json_schema["title"] == "cnnctl experiment config" and json_schema["description"] == "A cnnctl experiment."
    assert set(json_schema["properties"]) == set(Config.model_fields) == {
        "name", "description", "seed", "data", "model", "train", "runtime", "expect", "evaluate", "tune", "tracking"}
    assert set(json_schema["required"]) == {"name", "data", "model", "train"}
    assert json_schema["additionalProperties"] is False


@pytest.mark.parametrize("section", SECTIONS, ids=lambda cls: cls.__name__)
def test_attribute_docstrings_are_the_descriptions(json_schema, section):
    properties = (json_schema if section is Config else json_schema["$defs"][section.__name__])["properties"]
    documented = {field.alias or name: inspect.cleandoc(field.description)
                  for name, field in section.model_fields.items() if field.description}  # YAML keys: aliases
    assert {name: properties[name].get("description") for name in documented} == documented


def test_some_descriptions_word_for_word(json_schema):
    assert json_schema["properties"]["seed"]["description"] == (
        "Seed for weights, shuffling, validation split and synthetic data.")
    assert json_schema["$defs"]["TrainConfig"]["properties"]["monitor"]["description"] == (
        "Metric that picks checkpoints/best.keras (with no validation: the last epoch is the best).")
    assert "description" not in json_schema["$defs"]["TrainConfig"]["properties"]["shuffle"]  # no docstring


def test_layers_without_required_arguments_may_be_written_bare(json_schema):
    bare = json_schema["$defs"]["ModelConfig"]["properties"]["layers"]["items"]["oneOf"][-1]["enum"]
    assert {"Flatten", "MaxPooling2D", "BatchNormalization"} <= set(bare)
    assert not {"Conv2D", "Dense", "Dropout"} & set(bare)


def test_the_json_schema_accepts_the_bare_layer_forms_the_loader_accepts(json_schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema)
    dense = {"Dense": {"units": 3, "activation": "softmax"}}
    for flatten in ("Flatten", {"Flatten": None}, {"Flatten": {}}):
        config = tiny_config(layers=[flatten, dense])
        assert list(validator.iter_errors(config)) == []
        layer = Config.model_validate(config).model.layers[0]
        assert layer.type == "Flatten" and layer.args.kwargs() == {}
    assert not validator.is_valid(tiny_config(layers=["Dense"]))
    assert not validator.is_valid(tiny_config(layers=[{"Flatten": {}, "Dense": {"units": 3}}]))


def test_the_json_schema_takes_a_loss_as_a_name_or_a_mapping(json_schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema)
    for loss in ("categorical_crossentropy", {"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1}):
        assert list(validator.iter_errors(tiny_config(train={"loss": loss}))) == []
    for loss in ("hinge", {"label_smoothing": 0.1}, {"name": "categorical_crossentropy", "label_smoothing": 1}):
        assert not validator.is_valid(tiny_config(train={"loss": loss}))
    assert json_schema["$defs"]["TrainConfig"]["properties"]["loss"]["default"] == "sparse_categorical_crossentropy"
    assert validator.is_valid(tiny_config(evaluate={"tta": ["flip", "translate"], "translate_pixels": 2}))
    assert not validator.is_valid(tiny_config(evaluate={"tta": ["rotate"]}))
