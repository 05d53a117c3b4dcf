"""Loading a config: YAML -> --set overrides -> validated Config, with located errors (no TensorFlow)."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import CONFIGS, MINIMAL_YAML, TUTORIALS
from pydantic import ValidationError

from cnnctl.config import (
    MAX_ALIAS_CHARS,
    MAX_CONFIG_BYTES,
    MAX_NODES,
    MAX_PROBLEMS,
    Source,
    apply_overrides,
    config_from_yaml_text,
    format_path,
    load_config,
    parse_yaml,
    smoke_config,
    to_yaml,
)
from cnnctl.errors import CnnctlError, ConfigError, ShapeError

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>[\w.\[\]]+(?: \(\w+\))?): (?P<message>.+)$")


def problems_of(path, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.exit_code == 2
    return info.value.problems


# ---------------------------------------------------------------- valid configs


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    assert config.expect.params == TUTORIALS[name]
    assert config.model.layers[-1].type == "Dense"
    assert config.model.layers[-1].args.activation == "softmax"


def test_minimal_config_and_defaults(minimal_path):
    config = load_config(minimal_path)
    assert config.model.input_shape == [8, 8, 1]
    assert [entry.type for entry in config.model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    conv = config.model.layers[0].args
    assert (conv.filters, conv.kernel_size, conv.activation, conv.padding) == (4, 3, "relu", "valid")
    assert config.runtime.device == "auto" and config.runtime.precision == "auto"
    assert config.train.loss.name == "sparse_categorical_crossentropy" and config.train.loss.plain
    assert config.expect is None


def test_config_is_frozen(minimal_path):
    config = load_config(minimal_path)
    with pytest.raises(ValidationError):
        config.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.model.layers[0].args.filters = 3  # type: ignore[misc]


def test_bare_layer_names_are_accepted(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("- Flatten: {}", "- Flatten"))
    other = write_yaml(MINIMAL_YAML.replace("- Flatten: {}", "- Flatten:"), "other.yaml")
    assert load_config(path) == load_config(other)
    assert load_config(path).model.layers[2].type == "Flatten"


def test_aliases_map_to_the_same_keras_class(write_yaml):
    config = load_config(write_yaml(MINIMAL_YAML.replace("MaxPooling2D", "MaxPool2D")))
    entry = config.model.layers[1]
    assert entry.type == "MaxPool2D" and entry.keras_class == "MaxPooling2D"


# ---------------------------------------------------------------- one located problem each


def test_each_broken_config_gives_one_located_message(bad_config):
    path, start, end = bad_config
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(start), problems[0]
    assert problems[0].endswith(end), problems[0]
    assert LOCATED.match(problems[0]) or "YAML syntax error" in problems[0]


def test_typo_key_is_not_also_reported_missing(write_yaml):
    # `datset` is both an unknown key and a missing `dataset`: one message, with the suggestion.
    path = write_yaml(MINIMAL_YAML.replace("  dataset:", "  datset:"))
    assert problems_of(path) == [f"{path}:3:3: data.datset: unknown key; did you mean 'dataset'?"]


def test_typo_inside_a_layer_suggests_the_argument(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("kernel_size: 3", "kernel_sise: 3"))
    assert problems_of(path) == [f"{path}:7:28: model.layers[0].Conv2D.kernel_sise: unknown key; "
                                 "did you mean 'kernel_size'?"]


def test_shape_error_is_a_config_error_naming_the_layer(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("kernel_size: 3", "kernel_size: 9"))
    with pytest.raises(ShapeError) as info:
        load_config(path)
    assert info.value.index == 0
    assert isinstance(info.value, ConfigError)


def test_all_problems_are_collected_in_one_error(write_yaml):
    text = (MINIMAL_YAML.replace("  dataset: synthetic", "  dataset: synthetc")
            .replace("filters: 4", "filters: -1")
            .replace("activation: relu", "activaton: relu")
            .replace("epochs: 1", "epochs: lots")
            .replace("learning_rate: 0.01", "learning_rate: 0.01, rho: 0.9"))
    path = write_yaml(text)
    problems = problems_of(path)
    assert problems == [
        f"{path}:3:12: data.dataset: input should be 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', "
        "'directory', 'csv', 'npz' or 'synthetic', got 'synthetc'; did you mean 'synthetic'?",
        f"{path}:7:25: model.layers[0].Conv2D.filters: input should be greater than 0, got -1",
        f"{path}:7:45: model.layers[0].Conv2D.activaton: unknown key; did you mean 'activation'?",
        f"{path}:12:14: train.optimizer: sgd does not take rho (it takes clipnorm, clipvalue, global_clipnorm, "
        "learning_rate, momentum, nesterov, schedule, weight_decay, and ema, groups and exclude_from_weight_decay)",
        f"{path}:14:11: train.epochs: input should be a valid integer, unable to parse string as an integer, "
        "got 'lots'",
    ]
    assert str(ConfigError(problems)) == "\n".join(problems)


def test_missing_required_keys_are_located_at_their_section(write_yaml):
    path = write_yaml("name: x\ndata: {dataset: mnist}\nmodel:\n  input_shape: [4, 4, 1]\n")
    problems = problems_of(path)
    assert problems == [f"{path}:4:3: model.layers: required key is missing",
                        f"{path}:1:1: train: required key is missing"]


def test_python_object_tags_are_refused_and_never_run(write_yaml, tmp_path):
    marker = tmp_path / "owned"
    path = write_yaml(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "tags are not allowed" in problems[0]
    assert not marker.exists()


def test_python_name_tag_is_refused(write_yaml):
    path = write_yaml("name: !!python/name:os.system\n")
    assert problems_of(path) == [f"{path}:1:7: YAML syntax error: '!!python/name:os.system' tags are not allowed "
                                 "(configs are plain YAML)"]


def test_duplicate_keys_are_refused_even_when_nested(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("batch_size: 8", "batch_size: 8\n  batch_size: 16"))
    assert problems_of(path) == [f"{path}:14:3: train.batch_size: duplicate key"]


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("# only a comment\n", "an empty file"),
                                           ("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_a_config_must_be_a_mapping(write_yaml, text, got):
    path = write_yaml(text)
    assert problems_of(path) == [f"{path}:1:1: a config is a mapping with name, data, model and train; got {got}"]


def test_overrides_do_not_hide_a_file_that_is_not_a_mapping(write_yaml):
    path = write_yaml("- a\n- b\n")
    assert problems_of(path, ["name=x"]) == [f"{path}:1:1: a config is a mapping with name, data, model and "
                                             "train; got list"]


def test_missing_file(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such config file"]


def test_a_directory_is_not_a_config(tmp_path):
    assert problems_of(tmp_path) == [f"{tmp_path}: not a file"]


def test_binary_file_is_refused_at_its_first_bad_byte(write_yaml, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert problems_of(path) == [f"{path}:1:7: not UTF-8 text (byte 6 is 0xff)"]
    # The column counts characters, as the YAML errors do: "café" is 5 bytes but 4 characters.
    path.write_bytes("name: tiny\r\ndescription: café ".encode() + b"\xc3(\n")
    assert problems_of(path) == [f"{path}:2:19: not UTF-8 text (byte 31 is 0xc3)"]


def test_oversized_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("#" * (MAX_CONFIG_BYTES + 1))
    (problem,) = problems_of(path)
    assert "too large for a config" in problem


def test_alias_bombs_are_refused():
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(6))
    with pytest.raises(ConfigError, match="too large"):
        parse_yaml(text, "bomb.yaml")


def test_deep_nesting_is_refused():
    with pytest.raises(ConfigError, match="nested more than"):
        parse_yaml("a: " + "[" * 40 + "]" * 40, "deep.yaml")


def test_forbidden_layers_have_reasons(write_yaml):
    for name in ("Lambda", "TFSMLayer", "InputLayer"):
        path = write_yaml(MINIMAL_YAML.replace("- Flatten: {}", f"- {name}: {{}}"))
        (problem,) = problems_of(path)
        assert f"layer type {name!r} is not allowed" in problem


def test_a_layer_with_two_types_is_refused(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("- Flatten: {}", "- {Flatten: {}, Dropout: {rate: 0.1}}"))
    assert problems_of(path) == [f"{path}:9:7: model.layers[2]: each layer must be a one-key mapping like "
                                 "`Conv2D: {filters: 32, kernel_size: 3}`"]


def test_the_model_validator_messages_quote_the_input(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("epochs: 1", "epochs: 1\n  callbacks:\n    early_stopping: {patience: 2}"))
    (problem,) = problems_of(path)
    assert problem.endswith("train: callbacks.early_stopping monitors 'val_loss' but validation is 'none'")


def test_huge_layer_is_refused_before_anything_is_built(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("filters: 4", "filters: 1000000000"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:7:7: model.layers[0] (Conv2D): the model would have 10,000,000,000 parameters")


# ---------------------------------------------------------------- --set overrides


def test_override_values_are_typed_like_yaml():
    raw = apply_overrides({}, ["a.int=16", "a.float=0.5", "a.exp=1.0e-3", "a.bool=false", "a.list=[32,32,3]",
                               "a.str=hello world", "a.null=null", "a.map={x: 1}", "a.quoted='16'"], Source("x"))
    assert raw == {"a": {"int": 16, "float": 0.5, "exp": 0.001, "bool": False, "list": [32, 32, 3],
                         "str": "hello world", "null": None, "map": {"x": 1}, "quoted": "16"}}
    assert type(raw["a"]["int"]) is int and type(raw["a"]["float"]) is float


def test_overrides_change_the_loaded_config(minimal_path):
    config = load_config(minimal_path, [
        "model.input_shape=[32,32,3]",
        "train.optimizer.learning_rate=0.5",
        "train.shuffle=false",
        "train.batch_size=16",
        "runtime.precision=float32",
        "train.optimizer={name: adam, beta_1: 0.8}",
        "expect.params=12",
    ])
    assert config.model.input_shape == [32, 32, 3]
    assert config.train.optimizer.name == "adam" and config.train.optimizer.beta_1 == 0.8
    assert config.train.optimizer.learning_rate == 0.001  # the whole mapping was replaced
    assert config.train.shuffle is False and config.train.batch_size == 16
    assert config.runtime.precision == "float32"
    assert config.expect.params == 12


def test_later_overrides_win(minimal_path):
    assert load_config(minimal_path, ["train.epochs=2", "train.epochs=3"]).train.epochs == 3


@pytest.mark.parametrize("key", ["model.layers[0].Conv2D.filters", "model.layers.0.Conv2D.filters"])
def test_overrides_reach_into_layer_lists(minimal_path, key):
    config = load_config(minimal_path, [f"{key}=16"])
    assert config.model.layers[0].args.filters == 16
    assert config.model.layers[0].args.kernel_size == 3  # the rest of the layer is kept


def test_override_can_replace_a_whole_layer(minimal_path):
    config = load_config(minimal_path, ["model.layers[2]=GlobalMaxPooling2D"])
    assert config.model.layers[2].type == "GlobalMaxPooling2D"


def test_fashion_mnist_with_32_filters():
    from cnnctl.shapes import infer

    config = load_config(CONFIGS / "fashion_mnist.yaml", ["model.layers[0].Conv2D.filters=32"])
    assert sum(info.params for info in infer(config.model)) == 2_770_634


@pytest.mark.parametrize(("override", "expected"), [
    ("trian.epochs=3", "--set trian.epochs=3: trian: unknown key; did you mean 'train'?"),
    ("train.optimzer.name=adam", "--set train.optimzer.name=adam: train.optimzer: unknown key; "
                                 "did you mean 'optimizer'?"),
    ("train.batch_sise=3", "--set train.batch_sise=3: train.batch_sise: unknown key; did you mean 'batch_size'?"),
    ("model.layers[0].Conv2D.filtres=16", "--set model.layers[0].Conv2D.filtres=16: "
                                          "model.layers[0].Conv2D.filtres: unknown key; did you mean 'filters'?"),
    ("train.epochs=-1", "--set train.epochs=-1: train.epochs: input should be greater than 0, got -1"),
    ("model.layers[0].Conv2D.filters=two", "--set model.layers[0].Conv2D.filters=two: "
     "model.layers[0].Conv2D.filters: input should be a valid integer, unable to parse string as an integer, "
     "got 'two'"),
    ("model.input_shape=[0,3]", "--set model.input_shape=[0,3]: model.input_shape[0]: "
                                "input should be greater than 0, got 0"),
    ("runtime.device=tpu", "--set runtime.device=tpu: runtime.device: string should match pattern"),
    ("train.epochs", "--set train.epochs: expected key.path=value"),
    ("train..epochs=1", "--set train..epochs=1: empty key"),
    ("model.layers[9].Conv2D.filters=1", "--set model.layers[9].Conv2D.filters=1: model.layers[9]: no such list item"),
    ("train.epochs=[1", "--set train.epochs=[1: value:1:3: YAML syntax error: expected ',' or ']'"),
    ("train.epochs=!!python/name:os.system", "--set train.epochs=!!python/name:os.system: value:1:1: "
                                             "YAML syntax error: '!!python/name:os.system' tags are not allowed"),
    ("model.layers[0].Conv2D=null", "--set model.layers[0].Conv2D=null: model.layers[0].Conv2D.filters: "
                                    "required key is missing"),
])
def test_bad_overrides_are_located_at_the_override(minimal_path, override, expected):
    problems = problems_of(minimal_path, [override])
    assert problems[0].startswith(expected), problems


def test_override_problems_are_collected(minimal_path):
    problems = problems_of(minimal_path, ["train.epochs", "model.layers[9].Dense.units=1"])
    assert len(problems) == 2


def test_override_to_an_impossible_shape_names_the_layer(minimal_path):
    (problem,) = problems_of(minimal_path, ["model.input_shape=[2,2,1]"])
    assert problem.startswith(f"{minimal_path}:7:7: model.layers[0] (Conv2D): a 3x3 kernel")


def test_overrides_never_touch_the_file(minimal_path):
    before = minimal_path.read_bytes()
    mtime = minimal_path.stat().st_mtime_ns
    load_config(minimal_path, ["train.epochs=7", "model.layers[0].Conv2D.filters=16"])
    with pytest.raises(ConfigError):
        load_config(minimal_path, ["train.epochs=-7"])
    assert minimal_path.read_bytes() == before
    assert minimal_path.stat().st_mtime_ns == mtime


def test_overrides_apply_to_an_empty_file(write_yaml):
    config = load_config(write_yaml(""), ["name=tiny", "data.dataset=synthetic", "model.input_shape=[4,4,1]",
                                          "model.layers=[Flatten]", "train.optimizer.name=sgd"])
    assert config.name == "tiny" and config.model.layers[0].type == "Flatten"


# ---------------------------------------------------------------- resolved YAML


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_round_trips_through_its_resolved_yaml(path):
    """What a run writes to its config.yaml reads back as the same config (resume and evaluate read it)."""
    config = load_config(path)
    assert config_from_yaml_text(to_yaml(config), "resolved.yaml") == config


@pytest.mark.parametrize("name", TUTORIALS)
def test_resolved_yaml_round_trips(name):
    config = load_config(CONFIGS / f"{name}.yaml", ["train.epochs=2", "model.layers.0.Conv2D.filters=16"])
    text = to_yaml(config)
    again = config_from_yaml_text(text, "resolved.yaml")
    assert again == config
    assert to_yaml(again) == text
    assert again.train.epochs == 2 and again.model.layers[0].args.filters == 16


def test_resolved_yaml_keeps_only_what_layers_set(minimal_path):
    text = to_yaml(load_config(minimal_path))
    assert "- Conv2D: {filters: 4, kernel_size: 3, activation: relu}" in text
    assert "padding" not in text and "use_bias" not in text
    assert list(yaml.safe_load(text)) == ["name", "seed", "data", "model", "train", "runtime"]


def test_class_weight_keys_are_class_names_even_when_yaml_reads_numbers(minimal_path):
    config = load_config(minimal_path, ["train.class_weight={0: 2, '1': 0.5}"])
    assert config.train.class_weight == {"0": 2.0, "1": 0.5}  # MNIST's classes are named "0".."9"
    assert config_from_yaml_text(to_yaml(config), "x") == config
    assert load_config(minimal_path, ["train.class_weight=auto"]).train.class_weight == "auto"


def test_smoke_runs_weigh_synthetic_classes_auto_unless_the_names_are_theirs(minimal_path):
    by_name = load_config(minimal_path, ["train.class_weight={cat: 2}"])
    assert smoke_config(by_name).train.class_weight == "auto"  # synthetic classes are 0, 1, 2: no 'cat'
    named = load_config(minimal_path, ["train.class_weight={cat: 2}", "data.class_names=[cat, dog, bird]"])
    assert smoke_config(named).train.class_weight == {"cat": 2.0}
    assert smoke_config(load_config(minimal_path)).train.class_weight is None


def test_schedules_round_trip(minimal_path):
    config = load_config(minimal_path, ["train.optimizer={name: adam, schedule: {type: inverse_time, "
                                        "decay_rate: 1.0e-6}}"])
    assert config.train.optimizer.schedule.decay_steps == 1
    assert config_from_yaml_text(to_yaml(config), "x") == config


def test_losses_and_test_time_augmentation_round_trip(minimal_path):
    config = load_config(minimal_path, ["train.loss={name: categorical_crossentropy, label_smoothing: 0.1}",
                                        "evaluate={tta: [translate, flip], translate_pixels: 2}"])
    text = to_yaml(config)
    assert "  loss: {name: categorical_crossentropy, from_logits: false, label_smoothing: 0.1}\n" in text
    assert text.endswith("evaluate: {tta: [translate, flip], translate_pixels: 2}\n")
    assert config_from_yaml_text(text, "x") == config
    plain = load_config(minimal_path, ["train.loss={name: categorical_crossentropy}"])
    assert "  loss: categorical_crossentropy\n" in to_yaml(plain)  # no options: the name, as the tutorials write it


# MINIMAL_YAML with a loss (line 15) and an evaluate section (lines 16-18) after it.
WITH_LOSS_AND_TTA = MINIMAL_YAML + """\
  loss: {name: sparse_categorical_crossentropy, from_logits: false}
evaluate:
  tta: [flip]
  translate_pixels: 1
"""


@pytest.mark.parametrize(("edit", "expected"), [
    (("from_logits: false", "from_logits: true"),
     "15:62: train.loss.from_logits: true, but model.layers[3] (Dense) ends in a softmax: its outputs are "
     "probabilities, not logits; remove the softmax or set from_logits: false"),
    (("{name: sparse_categorical_crossentropy, from_logits: false}", "sparse_categorical_crossentropi"),
     "15:9: train.loss: input should be 'categorical_crossentropy' or 'sparse_categorical_crossentropy', got "
     "'sparse_categorical_crossentropi'; did you mean 'sparse_categorical_crossentropy'?"),
    (("tta: [flip]", "tta: [flip, rotate]"),
     "17:15: evaluate.tta[1]: input should be 'flip' or 'translate', got 'rotate'"),
    (("tta: [flip]", "tta: [flip, translat]"),
     "17:15: evaluate.tta[1]: input should be 'flip' or 'translate', got 'translat'; did you mean 'translate'?"),
    (("tta: [flip]\n  translate_pixels: 1", "tta: [translate]\n  translate_pixels: 8"),
     "18:21: evaluate.translate_pixels: 8 must be smaller than the 8x8 image"),
    (("tta: [flip]", "tta: [flip, flip]"), "17:8: evaluate.tta: lists a view twice: ['flip', 'flip']"),
])
def test_loss_and_evaluation_problems_are_located(write_yaml, edit, expected):
    path = write_yaml(WITH_LOSS_AND_TTA.replace(*edit))
    assert load_config(write_yaml(WITH_LOSS_AND_TTA, "good.yaml")).evaluate.tta == ["flip"]
    assert problems_of(path) == [f"{path}:{expected}"]


def test_an_unknown_view_exits_2_with_its_place(cli, write_yaml):
    path = write_yaml(WITH_LOSS_AND_TTA.replace("tta: [flip]", "tta: [mirror]"))
    result = cli("config", path)
    assert result.exit_code == 2 and result.stdout == ""
    assert f"{path}:17:9: evaluate.tta[0]: input should be 'flip' or 'translate', got 'mirror'" in result.output


def test_test_time_augmentation_needs_images(write_yaml):
    text = MINIMAL_YAML.replace("input_shape: [8, 8, 1]", "input_shape: [64]").replace(
        "    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}\n    - MaxPooling2D: {pool_size: 2}\n"
        "    - Flatten: {}\n", "")
    path = write_yaml(text + "evaluate: {tta: [flip]}\n")
    assert problems_of(path) == [f"{path}:12:17: evaluate.tta: views are flipped or shifted images, but "
                                 "model.input_shape [64] is not an image ([height, width(, channels)])"]


# ---------------------------------------------------------------- pieces


def test_format_path():
    assert format_path(("model", "layers", 3, "Conv2D", "filters")) == "model.layers[3].Conv2D.filters"
    assert format_path(()) == "(top level)"


def test_source_prefers_overrides_over_stale_file_marks():
    source = Source("c.yaml", marks={("a",): (1, 1), ("a", "b"): (2, 3)}, overrides={("a",): "a={b: 1}"})
    assert source.locate(("a", "b")) == "--set a={b: 1}"
    assert Source("c.yaml", marks={("a",): (4, 5)}).locate(("a", "zzz")) == "c.yaml:4:5"
    assert Source("c.yaml").locate(("a",)) == "c.yaml"


def test_config_errors_are_cnnctl_errors():
    assert issubclass(ConfigError, CnnctlError) and ConfigError("x").exit_code == 2
    assert ConfigError(["a", "b"]).problems == ["a", "b"]


# ---------------------------------------------------------------- bounded and located (issue 12)

BIG = "x" * 500_000


def error_of(cli, path) -> str:
    result = cli("config", path)
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "Traceback" not in result.output and result.stdout == ""
    return result.stderr


@pytest.mark.parametrize(("where", "edit"), [
    ("1:7: name: string should match pattern", ("name: tiny", f"name: {BIG}")),
    ("1:7: name: input should be a valid string", ("name: tiny", f"name: {'9' * 4000}")),
    ("4:5: data.", ("  dataset: synthetic", f"  dataset: synthetic\n  ? {BIG}\n  : 1")),
    ("9:7: model.layers[2]: unknown layer type", ("- Flatten: {}", f"- {BIG}")),
    ("12:36: train.optimizer.schedule: 'type' must be one of", ("learning_rate: 0.01}",
                                                                f"schedule: {{type: {BIG}}}}}")),
    ("12:3: train: callbacks.early_stopping monitors", ("batch_size: 8", f"callbacks: {{early_stopping: "
                                                                         f"{{monitor: val_{BIG}}}}}")),
    ("1:7: YAML syntax error: '!", ("name: tiny", f"name: !{BIG} tiny")),
    ("1:7: YAML syntax error: found undefined alias", ("name: tiny", f"name: *{BIG}")),
])
def test_a_500_kb_value_is_quoted_cut_short(cli, write_yaml, where, edit):
    path = write_yaml(MINIMAL_YAML.replace(*edit, 1))
    stderr = error_of(cli, path)
    assert stderr.startswith(f"error: {path}:{where}"), stderr[:300]
    assert "…" in stderr and len(stderr) < 1000, stderr


def test_a_long_override_is_quoted_cut_short(minimal_path):
    (problem,) = problems_of(minimal_path, [f"train.epochs={BIG}"])
    assert problem.startswith(f"--set train.epochs={'x' * 80}") and "… (500,013 characters)" in problem
    assert problem.endswith(f"got '{'x' * 100}…' (500,000 characters)")
    assert len(problem) < 600


def test_an_alias_repeating_a_large_string_is_refused_at_the_alias(cli, write_yaml):
    # 100 KB written once (line 9), then 900 layers `- *big` (lines 10 on): each an unknown layer type quoting
    # 100 KB, so 90 MB to report (it took 81 s and printed 200 MB).
    path = write_yaml(MINIMAL_YAML.replace("    - Flatten: {}", "\n".join(["    - &big " + "y" * 100_000]
                                                                          + ["    - *big"] * 900)))
    stderr = error_of(cli, path)
    crossing = MAX_ALIAS_CHARS // 100_000 + 1  # the first alias that takes the repeated text over the limit
    assert stderr == (f"error: {path}:{9 + crossing}:7: too large: with this alias, aliases repeat more than "
                      f"{MAX_ALIAS_CHARS:,} characters of text\n")


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_node_limit():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):  # 10 ** 9 nodes once expanded
        lines.append(f"{chr(97 + level)}: &{chr(97 + level)} [" + ", ".join([f"*{chr(96 + level)}"] * 10) + "]")
    with pytest.raises(ConfigError) as info:
        parse_yaml("\n".join(lines), "bomb.yaml")
    # Aliases in b repeat 10 x 11 nodes, in c 10 x 111, in d 10 x 1,111: 12,330; each *d in e adds 11,111 more,
    # so the 8th crosses 100,000.
    assert info.value.problems == [f"bomb.yaml:5:{len('e: &e [') + len('*d, ') * 7 + 1}: too large: with this "
                                   f"alias, aliases repeat more than {MAX_NODES:,} YAML nodes"]


def test_ordinary_aliases_still_work(write_yaml):
    text = MINIMAL_YAML.replace("    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}",
                                "    - &conv {Conv2D: {filters: 4, kernel_size: 3, activation: relu, padding: same}}\n"
                                "    - *conv")
    config = load_config(write_yaml(text))
    assert [entry.type for entry in config.model.layers][:2] == ["Conv2D", "Conv2D"]


def test_an_alias_inside_its_own_value_is_refused(write_yaml):
    path = write_yaml("name: tiny\nx: &loop [1, *loop]\n")
    assert problems_of(path) == [f"{path}:2:14: the alias *loop is nested inside the value it names"]


def test_nesting_thousands_deep_is_located_not_a_recursion_error():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: " + "[" * 5000 + "]" * 5000, "deep.yaml")
    assert info.value.problems == [f"deep.yaml:1:{3 + 33}: nested more than 32 levels deep"]


def test_too_many_nodes_are_located_at_the_first_one_too_many():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: [" + "0, " * MAX_NODES + "0]", "many.yaml")
    # the mapping and the list are nodes 1 and 2; node MAX_NODES + 1 is the list's item MAX_NODES - 2
    column = len("a: [") + len("0, ") * (MAX_NODES - 2) + 1
    assert info.value.problems == [f"many.yaml:1:{column}: too large: more than {MAX_NODES:,} YAML nodes "
                                   "(aliases expanded)"]


@pytest.mark.parametrize(("value", "message"), [
    ("!!int foo", "'foo' cannot be read as !!int (invalid literal for int() with base 10: 'foo')"),
    ("!!float foo", "'foo' cannot be read as !!float"),
    ("!!bool maybe", "'maybe' cannot be read as !!bool"),
    ("!!timestamp soon", "'soon' cannot be read as !!timestamp"),
    ("2024-13-45", "'2024-13-45' cannot be read as !!timestamp (month must be in 1..12)"),
    ("9" * 5000, f"'{'9' * 100}…' (5,000 characters) cannot be read as !!int (too large)"),
    ("0x" + "f" * 4000, f"'0x{'f' * 98}…' (4,002 characters) cannot be read as !!int (too large)"),
])
def test_values_yaml_cannot_convert_are_located(write_yaml, value, message):
    path = write_yaml(f"name: tiny\nseed: {value}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2:7: YAML error: {message}"), problem


def test_a_thousand_broken_layers_are_reported_as_a_few_and_a_count(write_yaml):
    text = MINIMAL_YAML.replace("    - Flatten: {}", "\n".join(["    - Flaten: {}"] * 990))
    path = write_yaml(text)
    problems = problems_of(path)
    listed = len(problems) - 1  # as many as fit in MAX_MESSAGE characters, at most MAX_PROBLEMS
    assert 1 <= listed <= MAX_PROBLEMS and sum(len(p) + 8 for p in problems) < 2048
    assert problems[0].startswith(f"{path}:9:7: model.layers[2]: unknown layer type 'Flaten'")
    assert problems[-1] == f"{path}: … and {990 - listed:,} more problems"


def test_an_anchor_defined_twice_says_where_it_was_first(write_yaml):
    path = write_yaml("name: &x tiny\ndescription: &x again\n")
    assert problems_of(path) == [f"{path}:2:14: YAML syntax error: found duplicate anchor 'x' "
                                 "(first defined on line 1)"]


# ---------------------------------------------------------------- data.augment (issue 18)

AUGMENTED_YAML = MINIMAL_YAML.replace("  dataset: synthetic\n", """\
  dataset: synthetic
  augment:
    - RandomFlip: {mode: horizontal}
    - RandomTranslation: {height_factor: 0.1, width_factor: [-0.1, 0.2]}
""")
AUGMENT_TYPES_LISTED = ("(allowed: RandomFlip, RandomTranslation, RandomRotation, RandomZoom, RandomContrast, "
                        "RandomBrightness, RandomErasing, MixUp, CutMix, AlternatingFlip)")
ONE_KEY = "each augmentation must be a one-key mapping like `RandomFlip: {mode: horizontal}`"


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("RandomTranslation:", "RandomTranslaton:", "6:7: data.augment[1]: unknown augmentation 'RandomTranslaton'; "
     f"did you mean 'RandomTranslation'? {AUGMENT_TYPES_LISTED}"),
    ("- RandomFlip: {mode: horizontal}", "- Lambda: {}", f"5:7: data.augment[0]: unknown augmentation 'Lambda' "
     f"{AUGMENT_TYPES_LISTED}"),
    ("height_factor: 0.1", "height_factor: 1.5",
     "6:42: data.augment[1].RandomTranslation.height_factor: input should be less than or equal to 1, got 1.5"),
    ("height_factor: 0.1", "height_factor: lots", "6:42: data.augment[1].RandomTranslation.height_factor: input "
     "should be a valid number, unable to parse string as a number, got 'lots'"),
    ("[-0.1, 0.2]", "[-0.1, 2]",
     "6:68: data.augment[1].RandomTranslation.width_factor[1]: input should be less than or equal to 1, got 2"),
    ("[-0.1, 0.2]", "[-0.1, 0.2, 0.3]", "6:61: data.augment[1].RandomTranslation.width_factor: list should have "
     "at most 2 items after validation, not 3"),
    ("{mode: horizontal}", "{mode: diagonal}", "5:26: data.augment[0].RandomFlip.mode: input should be "
     "'horizontal', 'vertical' or 'horizontal_and_vertical', got 'diagonal'"),
    ("{mode: horizontal}", "{mood: horizontal}", "5:20: data.augment[0].RandomFlip.mood: unknown key; "
     "did you mean 'mode'?"),
    ("RandomFlip: {mode: horizontal}", "Conv2D: {filters: 4, kernel_size: 3}",
     "5:7: data.augment[0]: 'Conv2D' is a model layer, not an augmentation: put it in model.layers"),
    ("- RandomFlip: {mode: horizontal}", "- 42", f"5:7: data.augment[0]: {ONE_KEY}"),
    ("- RandomFlip: {mode: horizontal}", "- [RandomFlip]", f"5:7: data.augment[0]: {ONE_KEY}"),
    ("- RandomFlip: {mode: horizontal}", "- {RandomFlip: {}, MixUp: {}}", f"5:7: data.augment[0]: {ONE_KEY}"),
    ("- Flatten: {}", "- RandomFlip: {}",
     "12:7: model.layers[2]: 'RandomFlip' is an augmentation, not a model layer: put it in data.augment"),
], ids=["unknown", "lambda", "too_big", "not_a_number", "pair_item", "three_numbers", "bad_mode", "typo_key",
        "model_layer", "number", "list", "two_keys", "augmentation_in_the_model"])
def test_augmentation_errors_are_one_located_line_each(cli, write_yaml, old, new, problem):
    assert old in AUGMENTED_YAML
    path = write_yaml(AUGMENTED_YAML.replace(old, new, 1))
    assert error_of(cli, path) == f"error: {path}:{problem}\n"
    assert problems_of(path) == [f"{path}:{problem}"]


def test_augmentation_round_trips_and_bare_names_are_accepted(write_yaml):
    config = load_config(write_yaml(AUGMENTED_YAML.replace("    - RandomFlip: {mode: horizontal}\n",
                                                           "    - RandomFlip: {mode: horizontal}\n    - MixUp\n")))
    assert [entry.type for entry in config.data.augment] == ["RandomFlip", "MixUp", "RandomTranslation"]
    assert yaml.safe_load(to_yaml(config))["data"]["augment"] == [
        {"RandomFlip": {"mode": "horizontal"}}, {"MixUp": {}},
        {"RandomTranslation": {"height_factor": 0.1, "width_factor": [-0.1, 0.2]}}]
    assert config_from_yaml_text(to_yaml(config), "again.yaml") == config
    assert load_config(CONFIGS / "mnist.yaml").data.augment == []


def test_augmentation_can_be_set_from_the_command_line(minimal_path):
    config = load_config(minimal_path, ["data.augment=[RandomFlip, {RandomRotation: {factor: 0.1}}]"])
    assert [entry.type for entry in config.data.augment] == ["RandomFlip", "RandomRotation"]
    (problem,) = problems_of(minimal_path, ["data.augment=[{RandomRotation: {factor: 2}}]"])
    assert problem == ("--set data.augment=[{RandomRotation: {factor: 2}}]: data.augment[0].RandomRotation.factor: "
                       "input should be less than or equal to 1, got 2")


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("kernel_size: 3,", "kernel_size: 0,", "7:41: model.layers[0].Conv2D.kernel_size: input should be greater than 0, "
     "got 0"),
    ("kernel_size: 3,", "kernel_size: [3, -1],", "7:45: model.layers[0].Conv2D.kernel_size[1]: input should be "
     "greater than 0, got -1"),
    ("batch_size: 8", "batch_size: 8\n  class_weight: autoo", "14:17: train.class_weight: input should be 'auto', "
     "got 'autoo'; did you mean 'auto'?"),
    ("batch_size: 8", "batch_size: 8\n  class_weight: {a: 0}", "14:21: train.class_weight.a: input should be "
     "greater than 0, got 0"),
])
def test_a_value_no_member_of_a_union_takes_is_one_problem(write_yaml, old, new, problem):
    # `kernel_size: 0` is neither a positive int nor a pair: one message, from the member that fits its kind.
    path = write_yaml(MINIMAL_YAML.replace(old, new, 1))
    assert problems_of(path) == [f"{path}:{problem}"]


def test_unknown_keys_named_like_types_are_not_taken_for_union_members(write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("  dataset: synthetic\n", "  dataset: synthetic\n  int: 1\n  float: 2\n"))
    assert problems_of(path) == [f"{path}:4:3: data.int: unknown key", f"{path}:5:3: data.float: unknown key"]
