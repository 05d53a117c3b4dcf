"""Property tests: whatever a config file or a --set override holds, loading it either succeeds or
fails with located problems (exit 2), never with a traceback.

The four tutorial configs are mutated (keys dropped, values retyped or replaced by junk, junk keys
inserted at any depth, layer lists shuffled, truncated and duplicated), random text and random YAML
documents are fed as files, and random overrides are built from the schema's real key paths.
Everything runs at the library level (no TensorFlow); a smaller number of examples go through the CLI,
and 500 hostile files (huge values, deep nesting, aliases and alias bombs, YAML tags, bytes that are not
UTF-8) go through `cnnctl config`: bounded messages, each located in the file.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, TUTORIALS, stderr_of, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cnnctl.cli import app
from cnnctl.config import MAX_PROBLEMS, config_from_yaml_text, load_config, to_yaml
from cnnctl.errors import ConfigError
from cnnctl.layers import LayerEntry
from cnnctl.schema import Config

# Reproducible in CI: the same examples every run, no example database.
FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
CLI = settings(FAST, max_examples=40)

# What the brief allows a problem line to start with: FILE:LINE:COL, the override, or a bare name.
LOCATED = re.compile(r"^(\S+:\d+:\d+|--set .+|\S+): ")

BASES = {name: yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) for name in TUTORIALS}
CONFIG_FILES = [CONFIGS / f"{name}.yaml" for name in TUTORIALS]


# ---------------------------------------------------------------- helpers


def assert_outcome(path: Path, overrides: list[str] | None = None) -> Config | None:
    """load_config returns a Config, or raises ConfigError whose every line is located; nothing else."""
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        assert exc.exit_code == 2
        lines = exc.message.splitlines()
        assert lines, "an error without a message"
        assert len(lines) == len(exc.problems), f"a problem spans several lines: {exc.problems!r}"
        text_lines = len(Path(path).read_text(encoding="utf-8", errors="replace").splitlines())
        for line in lines:
            assert LOCATED.match(line), line
            assert line.startswith((f"{path}:", "--set ")), line
            if at := re.match(rf"{re.escape(str(path))}:(\d+):(\d+): ", line):  # a position inside the file
                assert 1 <= int(at[1]) <= text_lines + 1 and int(at[2]) >= 1, line
        return None
    assert isinstance(config, Config)
    # What `cnnctl config` prints must load back to the very same config.
    assert config_from_yaml_text(to_yaml(config), "resolved") == config
    return config


def dump(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


def flow(value) -> str:
    """A value as the one-line YAML a user would type after `--set key=`."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=math.inf)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def nodes(tree, path=()):
    """Every (path, value) in a nested dict/list, the root included."""
    yield path, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from nodes(value, path + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from nodes(value, path + (index,))


def parent_of(tree, path):
    for part in path[:-1]:
        tree = tree[part]
    return tree


def dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _schema_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in cls.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        paths.append(path)
        for sub in _models_in(info.annotation):
            if not issubclass(sub, LayerEntry):
                paths += _schema_paths(sub, path)
    return paths


# Real key paths: every field of the schema, and every path of the tutorial configs (layers included).
REAL_PATHS = sorted(set(_schema_paths(Config)) | {dotted(p) for base in BASES.values() for p, _ in nodes(base) if p})


# ---------------------------------------------------------------- strategies

ODD_TEXT = ["", " ", "0", "-1", "1e9", "yes", "no", "~", "null", ".nan", "relu", "Conv2D", "Lambda", "é", "日本語",
            "\x1b[31m", "a\nb", "a\rb", "tab\there", "..", "/", "../../etc", "{", "[", "*alias", "&anchor",
            "!!python/name:os.system", "x" * 300, "\u2028", "\x00", "\ufeff"]
scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=2**31, max_value=2**300) | st.integers(max_value=-1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(ODD_TEXT)
)
keys = st.text(max_size=10) | st.sampled_from(ODD_TEXT + ["name", "data", "model", "layers", "filters"]) | \
    st.integers(-5, 5) | st.booleans() | st.none() | st.floats(allow_nan=False)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                    max_leaves=12)


def retyped(value):
    """The same value, as the wrong type: int->str, list->int, dict->list, ... (a strategy)."""
    if isinstance(value, bool):
        return st.sampled_from([str(value).lower(), int(value), [value], None])
    if isinstance(value, int):
        return st.sampled_from([str(value), float(value) + 0.5, -value, value * 10**12, 10**30, [value], {"v": value},
                                None])
    if isinstance(value, float):
        return st.sampled_from([str(value), -value, math.inf, math.nan, int(value * 1000) if math.isfinite(value) else 7, [value], None])
    if isinstance(value, str):
        return st.sampled_from([len(value), [value], {value: value}, value.upper(), value + "x", value[:-1], None])
    if isinstance(value, list):
        return st.sampled_from([len(value), value[0] if value else 0, dict(enumerate(value)), str(value), [value],
                                None])
    if isinstance(value, dict):
        return st.sampled_from([list(value.values()), list(value), str(value), [value], len(value), None])
    return junk


@st.composite
def mutated_configs(draw):
    """A tutorial config (as a dict) with one to four random mutations."""
    config = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in nodes(config) if p]
        kind = draw(st.sampled_from(["drop", "junk", "retype", "insert", "layers", "layers"]))
        layers = config.get("model", {}).get("layers") if isinstance(config.get("model"), dict) else None
        if kind == "layers" and isinstance(layers, list) and layers:
            how = draw(st.sampled_from(["shuffle", "truncate", "duplicate", "flood"]))
            if how == "shuffle":
                layers[:] = draw(st.permutations(layers))
            elif how == "truncate":
                del layers[draw(st.integers(0, len(layers) - 1)):]
            elif how == "duplicate":
                item = draw(st.sampled_from(layers))
                layers.insert(draw(st.integers(0, len(layers))), copy.deepcopy(item))
            else:  # past the 1000-layer limit, or just under it
                layers[:] = (layers * (1001 // len(layers) + 1))[:draw(st.sampled_from([1000, 1001, 5000]))]
        elif kind == "insert" or not paths:
            mappings = [p for p, v in nodes(config) if isinstance(v, dict)]
            target = config
            for part in draw(st.sampled_from(mappings)):
                target = target[part]
            target[draw(keys)] = draw(junk)
        else:
            path = draw(st.sampled_from(paths))
            parent = parent_of(config, path)
            if kind == "drop":
                del parent[path[-1]]
            elif kind == "junk":
                parent[path[-1]] = draw(junk)
            else:
                parent[path[-1]] = draw(retyped(parent[path[-1]]))
    return config


YAML_ALPHABET = "[]{}:,-?&*!|>'\"#%@` \n\t.0123456789abcnxyz_=~\\"
yaml_like_text = st.text(alphabet=YAML_ALPHABET, max_size=80)
real_keys = st.sampled_from(REAL_PATHS)
override_keys = (
    real_keys
    | st.builds(lambda p, j: f"{p}.{j}", real_keys, st.text(max_size=6))
    | st.builds(lambda p, i: f"{p}[{i}]", real_keys, st.integers(-2, 1200))
    | st.builds(lambda i, f: f"model.layers[{i}].Conv2D.{f}", st.integers(0, 8), st.sampled_from(
        ["filters", "kernel_size", "strides", "padding", "groups", "dilation_rate", "activation", "name", "nope"]))
    | st.text(max_size=15) | st.sampled_from(["", ".", "..", "a..b", "[0]", "model.[0]", "model.layers[", "=", " "])
)
override_values = st.builds(flow, junk) | st.text(max_size=20) | yaml_like_text
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values) | st.text(max_size=15),
    min_size=1, max_size=3,
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties") / "config.yaml"


# ---------------------------------------------------------------- library level


@FAST
@given(config=mutated_configs())
def test_mutated_configs_load_or_fail_located(scratch, config):
    scratch.write_text(dump(config), encoding="utf-8")
    assert_outcome(scratch)


@FAST
@given(text=st.text(max_size=200) | yaml_like_text)
def test_random_text_loads_or_fails_located(scratch, text):
    scratch.write_text(text, encoding="utf-8")
    assert_outcome(scratch)


@settings(FAST, max_examples=50)
@given(blob=st.binary(max_size=100))
def test_random_bytes_load_or_fail_located(scratch, blob):
    scratch.write_bytes(blob)
    assert_outcome(scratch)


@FAST
@given(value=junk)
def test_random_yaml_documents_load_or_fail_located(scratch, value):
    scratch.write_text(dump(value), encoding="utf-8")
    assert_outcome(scratch)


@FAST
@given(config=st.sampled_from(CONFIG_FILES), sets=overrides)
def test_random_overrides_apply_or_fail_located(config, sets):
    assert_outcome(config, sets)


@FAST
@given(config=st.sampled_from(CONFIG_FILES), key=real_keys, value=junk)
def test_any_real_key_set_to_junk_applies_or_fails_located(config, key, value):
    assert_outcome(config, [f"{key}={flow(value)}"])


@settings(FAST, max_examples=60)
@given(config=mutated_configs(), sets=overrides)
def test_mutated_configs_with_overrides_load_or_fail_located(scratch, config, sets):
    scratch.write_text(dump(config), encoding="utf-8")
    assert_outcome(scratch, sets)


def test_the_mutations_reach_both_outcomes(scratch):
    """The properties above are only worth something if mutations both pass and fail validation."""
    outcomes = set()

    @settings(FAST, max_examples=60)
    @given(config=mutated_configs())
    def probe(config):
        scratch.write_text(dump(config), encoding="utf-8")
        outcomes.add(assert_outcome(scratch) is not None)

    probe()
    assert outcomes == {True, False}


# ---------------------------------------------------------------- through the CLI


def assert_cli_outcome(result) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert stderr_of(result).startswith("error:"), stderr_of(result)
    else:
        assert config_from_yaml_text(result.stdout, "stdout") is not None


@CLI
@given(config=mutated_configs(), sets=st.none() | overrides)
def test_cli_config_of_mutated_configs_exits_0_or_2(runner, scratch, config, sets):
    scratch.write_text(dump(config), encoding="utf-8")
    args = ["config", str(scratch)] + [arg for text in sets or [] for arg in ("--set", text)]
    result = runner.invoke(app, args)
    assert_cli_outcome(result)
    if result.exit_code == 2:
        # summary builds a Keras model for a valid config (slow); for a refused one it must stop the same way.
        summary = runner.invoke(app, ["summary", *args[1:]])
        assert summary.exit_code == 2 and stderr_of(summary) == stderr_of(result)


@CLI
@given(text=st.text(max_size=200) | yaml_like_text | st.builds(dump, junk))
def test_cli_config_of_random_yaml_exits_0_or_2(runner, scratch, text):
    scratch.write_text(text, encoding="utf-8")
    assert_cli_outcome(runner.invoke(app, ["config", str(scratch)]))


@CLI
@given(config=st.sampled_from(CONFIG_FILES), sets=overrides)
def test_cli_config_with_random_overrides_exits_0_or_2(runner, config, sets):
    result = runner.invoke(app, ["config", str(config), *[arg for text in sets for arg in ("--set", text)]])
    assert_cli_outcome(result)


# ---------------------------------------------------------------- hostile files through `cnnctl config` (issue 12)

HOSTILE = settings(FAST, max_examples=500)
HOSTILE_BASES = {**BASES, "tiny": tiny_config()}
MAX_MESSAGE_BYTES = 2048
# Raw YAML that a dumped value cannot be: tags, values PyYAML cannot convert, broken syntax, undefined aliases.
RAW_VALUES = ["!!int foo", "!!float bar", "!!bool maybe", "!!timestamp soon", "2024-13-45", "!!binary AAAA",
              "!!set {a, b}", "!!python/object/apply:os.system [echo owned]", "!custom 1", "*nowhere", "[1, 2",
              "{a: 1, a: 2}", "'unterminated", "&lonely", "!!str", "1e400", "-.inf", "0x" + "f" * 5000,
              "9" * 4300, "9" * 4301, "1:2:3:4:5"]
BAD_BYTES = [b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\x1b[31m", b"\x07",
             b"\xef\xbb\xbf", b"\xfe\xff"]
big_sizes = st.sampled_from([101, 5_000, 100_000, 300_000])


def raw_nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@st.composite
def hostile_files(draw) -> bytes:
    """A tutorial config or tiny_config, dumped as YAML, with up to four hostile edits."""
    config = copy.deepcopy(HOSTILE_BASES[draw(st.sampled_from(sorted(HOSTILE_BASES)))])
    raw: dict[str, str] = {}  # placeholder written as a key or value -> the YAML text that replaces it (and
    # that yaml.safe_dump, slow on 300 KB strings, never sees)
    appended, bad_bytes = [], []

    def place(value) -> None:
        """Set `value` at a random existing path, or under a new (unknown) key of a random mapping."""
        paths = [p for p, _ in nodes(config) if p]
        if paths and draw(st.booleans()):
            path = draw(st.sampled_from(paths))
            parent_of(config, path)[path[-1]] = value
        else:
            target = draw(st.sampled_from([v for _, v in nodes(config) if isinstance(v, dict)]))
            target[draw(keys)] = value

    def placeholder(text: str) -> str:
        token = f"zzraw{len(raw)}zz"
        raw[token] = text
        return token

    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["retype", "junk", "unknown_key", "huge", "deep", "alias", "raw", "bytes",
                                     "bomb", "drop", "layers"]))
        paths = [p for p, _ in nodes(config) if p]
        if kind == "retype" and paths:
            path = draw(st.sampled_from(paths))
            parent = parent_of(config, path)
            parent[path[-1]] = draw(retyped(parent[path[-1]]))
        elif kind == "junk":
            place(draw(junk))
        elif kind == "unknown_key":
            target = draw(st.sampled_from([v for _, v in nodes(config) if isinstance(v, dict)]))
            target[draw(keys) if draw(st.booleans()) else placeholder("k" * draw(big_sizes))] = draw(junk)
        elif kind == "huge":
            size = draw(big_sizes)
            place(draw(st.sampled_from([placeholder("x" * size), placeholder("9" * min(size, 6000)), [size] * 3])))
        elif kind == "deep":
            place(placeholder(raw_nested(draw(st.sampled_from([5, 30, 31, 32, 33, 40, 500])))))
        elif kind == "alias":
            anchored = draw(st.sampled_from(["y" * draw(big_sizes), "[1, 2, 3]", "{units: 3}", raw_nested(20)]))
            place(placeholder(f"&a {anchored}"))
            for _ in range(draw(st.integers(1, 3))):
                place(placeholder("[" + ", ".join(["*a"] * draw(st.sampled_from([1, 10, 1000]))) + "]"))
        elif kind == "raw":
            place(placeholder(draw(st.sampled_from(RAW_VALUES))))
        elif kind == "bytes":
            bad_bytes.append(draw(st.sampled_from(BAD_BYTES)))
        elif kind == "bomb":  # the billion laughs, as unknown top-level keys after the config
            depth = draw(st.integers(2, 9))
            appended.append("l0: &l0 [x, x, x, x, x, x, x, x, x, x]")
            appended += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, depth)]
        elif kind == "drop" and paths:
            path = draw(st.sampled_from(paths))
            del parent_of(config, path)[path[-1]]
        elif kind == "layers":
            layers = config.get("model", {}).get("layers") if isinstance(config.get("model"), dict) else None
            if isinstance(layers, list) and layers:
                how = draw(st.sampled_from(["shuffle", "truncate", "no_flatten"]))
                if how == "shuffle":
                    layers[:] = draw(st.permutations(layers))
                elif how == "truncate":
                    del layers[draw(st.integers(0, len(layers) - 1)):]
                else:
                    layers[:] = [layer for layer in layers if layer not in ({"Flatten": {}}, {"Flatten": None},
                                                                            "Flatten")]
    text = dump(config)
    for token, replacement in raw.items():
        text = text.replace(f"'{token}'", replacement).replace(token, replacement)
    text += "".join(line + "\n" for line in appended)
    data = text.encode("utf-8")
    for blob in bad_bytes:
        at = len(text[:draw(st.integers(0, len(text)))].encode("utf-8"))  # between two characters
        data = data[:at] + blob + data[at:]
    return data


def assert_bounded_and_located(result, path: Path, data: bytes) -> None:
    """Exit 0 with a config that loads back, or exit 2 with short messages located in the file."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output[:2000], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert config_from_yaml_text(result.stdout, "stdout") is not None
        return
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines() or [""]
    messages = stderr_of(result).splitlines()
    assert 1 <= len(messages) <= MAX_PROBLEMS + 1, messages[:3]
    assert len(stderr_of(result).encode()) < MAX_MESSAGE_BYTES, messages[:3]  # the whole error, not each line
    for message in messages:
        assert len(message.encode()) < MAX_MESSAGE_BYTES, message[:300]
        assert message.startswith(f"error: {path}:"), message[:300]
        whole_file = r"(… and [\d,]+ more problems|[\d,]+ bytes is too large)"
        if re.match(rf"error: {re.escape(str(path))}: {whole_file}", message):
            continue  # about the file as a whole
        at = re.match(rf"error: {re.escape(str(path))}:(\d+):(\d+): ", message)
        assert at, f"not located: {message[:300]}"
        line, column = int(at[1]), int(at[2])
        assert 1 <= line <= len(lines) + 1 and 1 <= column <= max(len(x) for x in lines) + 1, message[:300]


@HOSTILE
@given(data=hostile_files())
def test_cli_config_of_hostile_files_is_bounded_and_located(runner, scratch, data):
    scratch.write_bytes(data)
    assert_bounded_and_located(runner.invoke(app, ["config", str(scratch)]), scratch, data)
