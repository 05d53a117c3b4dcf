"""Load an experiment: YAML file -> `--set` overrides -> validated, frozen `Config`.

Every problem is collected and reported at once (the first MAX_PROBLEMS, and a count of the rest), each
located as `FILE:LINE:COL: key.path: message` (or `--set key.path=value: ...` for an override), quoting
what the user wrote cut to about MAX_ECHO characters. No TensorFlow is imported here.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cnnctl.errors import ConfigError, ShapeError
from cnnctl.layers import (
    ALL_TYPES,
    AUGMENT_TYPES,
    FORBIDDEN_LAYERS,
    LAYER_TYPES,
    LayerEntry,
    layer_names,
    name_problems,
)
from cnnctl.schema import Config
from cnnctl.shapes import check_class_scores, infer

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000  # YAML nodes, aliases expanded
MAX_ALIAS_CHARS = MAX_CONFIG_BYTES  # characters of scalars that aliases repeat, counted through aliases of aliases
MAX_INT_BITS = 14_000  # about 4,200 digits: Python refuses to print an int of more than 4,300
MAX_ECHO = 100  # characters of a value, key or override quoted in a message
MAX_PATH = 200  # characters of a key path in a message
MAX_MESSAGE = 1000  # characters of one problem after its location (the longest lists every layer type)
MAX_PROBLEMS = 20  # problems listed in one error; the rest are counted
MAX_MESSAGE = 1_500  # characters of the problems listed in one error (each is cut to 1,000 at most)

Path_ = tuple[str | int, ...]


@dataclass
class Source:
    """Where each value of a raw config came from, for error messages."""

    name: str
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # value node positions
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # key positions
    overrides: dict[Path_, str] = field(default_factory=dict)  # path -> the --set text

    def locate(self, path: Path_, *, at_key: bool = False) -> str:
        # An override replaces everything under its path, so the file's marks there are stale.
        for n in range(len(path), -1, -1):
            if path[:n] in self.overrides:
                return f"--set {printable(self.overrides[path[:n]])}"
        for n in range(len(path), -1, -1):
            prefix = path[:n]
            marks = self.key_marks if at_key and n == len(path) else self.marks
            if prefix in marks:
                line, col = marks[prefix]
                return f"{self.name}:{line}:{col}"
        return self.name


def printable(text: str, limit: int | None = MAX_ECHO) -> str:
    """User text as it is echoed in a message: line breaks and control characters escaped, so that
    one problem stays one line and a key cannot recolour or rewrite the terminal; cut after `limit`
    characters (None: never), so that a 500 KB value is not repeated in full."""
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text
    out, size = [], 0
    for char in text:
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if limit is not None and size + len(piece) > limit:
            return "".join(out) + f"… ({len(text):,} characters)"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def echo(value: Any) -> str:
    """A value the user wrote, quoted as Python would (`'relu'`, `-3`), cut to about MAX_ECHO characters."""
    if isinstance(value, str) and len(value) > MAX_ECHO:
        quoted = repr(value[:MAX_ECHO])
        return f"{quoted[:-1]}…{quoted[-1]} ({len(value):,} characters)"
    return printable(repr(value))


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{printable(str(part))}" if out else printable(str(part)))
    if len(out) > MAX_PATH:  # keys nested 32 deep: keep where it starts and where it ends
        out = f"{out[:MAX_PATH // 2]}…{out[-MAX_PATH // 2:]}"
    return out or "(top level)"


def _at(name: str, mark: yaml.Mark) -> str:
    return f"{name}:{mark.line + 1}:{mark.column + 1}"


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the limits checked while the document is composed, each located where it
    is crossed: the nesting depth, and what aliases repeat (YAML nodes and characters of text, counted
    through aliases of aliases), so an alias bomb is refused at its first alias too many, before
    anything is expanded. A value PyYAML cannot convert (`!!int x`, 2024-13-45) is located too."""

    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.name = name
        self.depth = 0
        self.open_anchors: set[str] = set()  # anchors of the collections being composed
        self.repeated = [0, 0]  # nodes and characters that aliases repeat
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, characters) under it

    def compose_node(self, parent, index):
        event = self.peek_event()
        where = _at(self.name, event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.open_anchors:
                raise ConfigError(f"{where}: the alias *{printable(event.anchor)} is nested inside the value it "
                                  "names")
            node = super().compose_node(parent, index)
            nodes, chars = self._size(node)
            self.repeated[0] += nodes
            self.repeated[1] += chars
            if self.repeated[0] > MAX_NODES or self.repeated[1] > MAX_ALIAS_CHARS:
                raise ConfigError(f"{where}: too large: with this alias, aliases repeat more than "
                                  + (f"{MAX_NODES:,} YAML nodes" if self.repeated[0] > MAX_NODES
                                     else f"{MAX_ALIAS_CHARS:,} characters of text"))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the top-level value is depth 0
                raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            if event.anchor is not None:
                self.open_anchors.add(event.anchor)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.discard(event.anchor)

    def _size(self, node: yaml.Node) -> tuple[int, int]:
        if id(node) not in self.sizes:
            if isinstance(node, yaml.ScalarNode):
                self.sizes[id(node)] = (1, len(node.value))
            else:
                items = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
                sizes = [self._size(item) for item in items]
                self.sizes[id(node)] = (1 + sum(n for n, _ in sizes), sum(c for _, c in sizes))
        return self.sizes[id(node)]

    def construct_object(self, node, deep=False):
        try:
            data = super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            why = printable(str(exc)) if isinstance(exc, ValueError) else ""
            why = "too large" if "integer string conversion" in why else why  # not Python's advice on it
        else:
            if not isinstance(data, int) or data.bit_length() <= MAX_INT_BITS:
                return data
            why = "too large"
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        value = echo(node.value) if isinstance(node.value, str) else "this value"
        raise ConfigError(f"{_at(self.name, node.start_mark)}: YAML error: {value} cannot be read as {tag}"
                          + (f" ({why})" if why else ""))


def _walk(node: yaml.Node, path: Path_, source: Source, depth: int, count: list[int]) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ConfigError(f"{_at(source.name, node.start_mark)}: too large: more than {MAX_NODES:,} YAML nodes "
                          "(aliases expanded)")
    if depth > MAX_DEPTH:  # through an alias: the loader checked the depth of what was written
        raise ConfigError(f"{_at(source.name, node.start_mark)}: nested more than {MAX_DEPTH} levels deep")
    source.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            where = _at(source.name, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]: 1`, `{[x]: 1}`
                raise ConfigError(f"{where}: {format_path(path)}: a key must be plain text, "
                                  f"not a {'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}")
            key = key_node.value
            if key in seen:
                raise ConfigError(f"{where}: {format_path(path + (key,))}: duplicate key")
            seen.add(key)
            source.key_marks[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, path + (key,), source, depth + 1, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), source, depth + 1, count)


def parse_yaml(text: str, name: str) -> tuple[Any, Source]:
    """Safe-load YAML text, recording the line and column of every key and value."""
    source = Source(printable(name, limit=None))
    name = source.name
    try:
        loader = _Loader(text, name)  # refuses control characters here, before parsing
    except yaml.reader.ReaderError as exc:
        line, column = _line_and_column(text, exc.position)
        raise ConfigError(f"{name}:{line}:{column}: YAML syntax error: character U+{exc.character:04X} "
                          "is not allowed in YAML") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, source
        _walk(node, (), source, 0, [0])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _at(name, mark) if mark else name
        problem = exc.problem or exc.context or "invalid YAML"
        if problem == "second occurrence" and exc.context and exc.context_mark:  # an anchor defined twice
            problem = exc.context.replace("; first occurrence",
                                          f" (first defined on line {exc.context_mark.line + 1})")
        if "constructor for the tag" in problem:
            tag = problem.split("for the tag", 1)[-1].strip().strip("'\"").replace("tag:yaml.org,2002:", "!!")
            problem = f"{echo(tag)} tags are not allowed (configs are plain YAML)"
        raise ConfigError(f"{where}: YAML syntax error: {printable(problem, limit=2 * MAX_ECHO)}") from None
    except yaml.YAMLError as exc:
        problem = printable(" ".join(str(exc).split()), limit=2 * MAX_ECHO)
        raise ConfigError(f"{name}: YAML error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    finally:
        loader.dispose()
    return data, source


def _line_and_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at `position`."""
    return text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)


def read_config_file(path: str | Path) -> tuple[Any, Source]:
    path = Path(path)
    shown = printable(str(path), limit=None)
    if not path.exists():
        raise ConfigError(f"{shown}: no such config file")
    if not path.is_file():
        raise ConfigError(f"{shown}: not a file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{shown}: {size:,} bytes is too large for a config (limit {MAX_CONFIG_BYTES:,})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # the text before the bad byte is UTF-8: count its lines and characters
        before = data[:exc.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        line, column = _line_and_column(before, len(before))
        raise ConfigError(f"{shown}:{line}:{column}: not UTF-8 text (byte {exc.start:,} is "
                          f"{data[exc.start]:#04x})") from None
    # Newlines as read_text gives them ("\r\n" and "\r" become "\n"): lines are counted as editors count them
    return parse_yaml(text.replace("\r\n", "\n").replace("\r", "\n"), str(path))


# ---------------------------------------------------------------- overrides


def parse_key_path(text: str) -> Path_:
    parts: list[str | int] = []
    for chunk in text.replace("[", ".").replace("]", "").split("."):
        if not chunk:
            raise ValueError("empty key")
        parts.append(int(chunk) if chunk.isdigit() else chunk)
    return tuple(parts)


def apply_overrides(raw: Any, overrides: list[str], source: Source) -> Any:
    """Apply `key.path=value` overrides; values are YAML (`[32,32,3]`, `0.01`, `true`)."""
    if not overrides or (raw is not None and not isinstance(raw, dict)):
        return raw  # a file that is not a mapping is reported as such by validate(), not replaced
    raw = raw if isinstance(raw, dict) else {}
    problems = []
    for text in overrides:
        shown = printable(text) if text.strip() else repr(text)
        key, sep, value_text = text.partition("=")
        try:
            if not sep:
                raise ValueError("expected key.path=value")
            path = parse_key_path(key.strip())
            value, _ = parse_yaml(value_text, "value")
        except (ValueError, ConfigError) as exc:
            problems.append(f"--set {shown}: {exc}")
            continue
        target: Any = raw
        for depth, part in enumerate(path[:-1]):
            nxt = path[depth + 1]
            if isinstance(target, list):
                if not isinstance(part, int) or part >= len(target):
                    problems.append(f"--set {shown}: {format_path(path[:depth + 1])}: no such list item")
                    break
                target = target[part]
            elif isinstance(target, dict):
                if not isinstance(target.get(part), (dict, list)):
                    target[part] = [] if isinstance(nxt, int) else {}
                    source.overrides.setdefault(path[:depth + 1], text)
                target = target[part]
            else:
                problems.append(f"--set {shown}: {format_path(path[:depth])} is not a mapping")
                break
        else:
            last = path[-1]
            if isinstance(target, list) and isinstance(last, int) and last < len(target):
                target[last] = value
            elif isinstance(target, dict) and not isinstance(last, int):
                target[last] = value
            else:
                problems.append(f"--set {shown}: {format_path(path)}: cannot be set")
                continue
            source.overrides[path] = text
    if problems:
        raise ConfigError(problems)
    return raw


# ---------------------------------------------------------------- validation


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete classes an annotation can hold (through Optional, Annotated, list, Union)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None), list):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _fields_at(path: Path_) -> list[str]:
    """Valid key names of the mapping at `path`, walking the schema classes."""
    candidates: list[Any] = [Config]
    for part in path:
        nxt: list[Any] = []
        for cls in candidates:
            if isinstance(part, int):
                nxt.append(cls)  # list items were already unwrapped
            elif isinstance(cls, type) and issubclass(cls, LayerEntry) and part in ALL_TYPES:
                nxt.extend(_unwrap(ALL_TYPES[part][0]))
            elif isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
                nxt.extend(_unwrap(cls.model_fields[part].annotation))
        candidates = nxt
    names: list[str] = []
    for cls in candidates:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and not issubclass(cls, LayerEntry):
            names.extend(cls.model_fields)
    return names


def _closest(word: str, options: list[str]) -> str | None:
    if len(word) > MAX_ECHO:  # no option is that long; difflib would only spend time on it
        return None
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        close = [o for o in options if o.lower() == word.lower()]
    return close[0] if close else None


def suggest(word: str, options: list[str]) -> str:
    close = _closest(word, options)
    return f"; did you mean {close!r}?" if close else ""


def _layer_type_message(value: Any, augment: bool = False) -> str:
    types, what = (AUGMENT_TYPES, "augmentation") if augment else (LAYER_TYPES, "layer type")
    if isinstance(value, dict) and len(value) == 1:
        name = next(iter(value))
    elif isinstance(value, str):
        name = value
    elif augment:
        return "each augmentation must be a one-key mapping like `RandomFlip: {mode: horizontal}`"
    else:
        return "each layer must be a one-key mapping like `Conv2D: {filters: 32, kernel_size: 3}`"
    if name in FORBIDDEN_LAYERS and not augment:
        return f"layer type {name!r} is not allowed: {FORBIDDEN_LAYERS[name]}"
    if augment and name in LAYER_TYPES:
        return f"{name!r} is a model layer, not an augmentation: put it in model.layers"
    if not augment and name in AUGMENT_TYPES:  # where Keras' tutorials put it; here it runs in the input pipeline
        return f"{name!r} is an augmentation, not a model layer: put it in data.augment"
    return (f"unknown {what} {echo(name)}{suggest(str(name), list(types))} "
            f"(allowed: {', '.join(types)})")


def _message(error: dict, path: Path_) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        options = _fields_at(path[:-1])
        return f"unknown key{suggest(str(path[-1]), options)}" if options else "unknown key"
    if kind in ("layer_type", "augment_type"):
        return _layer_type_message(error["input"], augment=kind == "augment_type")
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        options = [o.strip(" '") for o in error.get("ctx", {}).get("expected", "").replace(" or ", ",").split(",")]
        hint = suggest(str(error["input"]), [o for o in options if o])
        return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {echo(error['input'])}{hint}"
    if kind == "value_error":  # our validators' messages, which quote short values
        return printable(error["msg"].removeprefix("Value error, "), limit=4 * MAX_ECHO)
    if kind == "union_tag_invalid":  # pydantic's message quotes the tag in full
        ctx = error.get("ctx", {})
        return (f"{ctx.get('discriminator', 'the tag')} must be one of {ctx.get('expected_tags')}, "
                f"got {echo(ctx.get('tag'))}")
    message = error["msg"]
    if "input" in error and not isinstance(error["input"], (dict, list)):
        message = f"{message}, got {echo(error['input'])}"
    return message[0].lower() + message[1:]


def _clean_loc(loc: tuple) -> Path_:
    """Drop the tags pydantic adds for tagged unions: ('layers', 3, 'Conv2D', 'Conv2D', 'filters')."""
    out: list[str | int] = []
    for part in loc:
        if out and part == out[-1] and part in ALL_TYPES:
            continue
        if isinstance(part, str) and part.startswith(("function-", "constant", "inverse_time", "exponential",
                                                      "cosine")) and out and out[-1] == "schedule":
            continue
        out.append(part)
    return tuple(out)


# The labels pydantic puts in an error's location for the members of a plain union: `3`, `[3, 3]` as
# 'constrained-int' and 'list[constrained-int]', 'auto' or a mapping as "literal['auto']" and 'dict[str,float]'.
_UNION_MEMBER = re.compile(r"^(?:(?:literal|list|dict|tuple|set|frozenset)\[.*\]|constrained-\w+|int|float|str|bool)$")


def _one_branch_per_union(errors: list[tuple[dict, Path_]]) -> list[tuple[dict, Path_]]:
    """A value no member of a union accepts fails once per member (`kernel_size: 0` is neither a positive int
    nor a list): keep the errors of one member, the first whose kind fits the value (the list's, for a list
    that is too long), else the first, and drop the member labels from the paths."""
    members: dict[Path_, dict[str, list[int]]] = {}  # union's path -> member label -> indices of its errors
    for index, (error, path) in enumerate(errors):
        if error["type"] == "extra_forbidden":
            continue  # an unknown key named `int` or `float` is the config's, not a member label
        at = next((i for i, part in enumerate(path) if isinstance(part, str) and _UNION_MEMBER.match(part)), None)
        if at is not None:
            members.setdefault(path[:at], {}).setdefault(path[at], []).append(index)

    def misfit(index: int, depth: int) -> bool:  # the member refuses the value's kind, not its content
        error, path = errors[index]
        kind = error["type"]
        return len(path) == depth + 1 and (kind.endswith(("_type", "_parsing")) or kind == "literal_error")

    drop: set[int] = set()
    label_at: dict[int, int] = {}  # error index -> where its member label is in its path
    for union, by_member in members.items():
        if len(by_member) < 2:
            continue  # not a union's members after all (a key that happens to be named like one)
        found = list(by_member.values())
        keep = next((f for f in found if not all(misfit(i, len(union)) for i in f)), found[0])
        for indices in found:
            if indices is keep:
                label_at.update(dict.fromkeys(indices, len(union)))
            else:
                drop.update(indices)
    out = []
    for index, (error, path) in enumerate(errors):
        if index in label_at:
            out.append((error, path[:label_at[index]] + path[label_at[index] + 1:]))
        elif index not in drop:
            out.append((error, path))
    return out


def validate(raw: Any, source: Source) -> Config:
    """Validate a raw config (from YAML, after overrides) into a frozen `Config`."""
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{source.name}:1:1: a config is a mapping with name, data, model and train; got {got}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = _one_branch_per_union([(error, _clean_loc(error["loc"])) for error in exc.errors()])
        # A misspelt required key is both unknown and missing: report it once, as unknown with its suggestion.
        misspelt = {path[:-1] + (close,) for error, path in errors if error["type"] == "extra_forbidden"
                    and (close := _closest(str(path[-1]), _fields_at(path[:-1])))}
        problems = []
        for error, path in errors:
            if error["type"] == "missing" and path in misspelt:
                continue
            where = source.locate(path, at_key=error["type"] == "extra_forbidden")
            problems.append(f"{where}: {format_path(path)}: {printable(_message(error, path), limit=MAX_MESSAGE)}")
        raise ConfigError(at_most(problems, source)) from None


def at_most(problems: list[str], source: Source) -> list[str]:
    """The first problems, up to MAX_PROBLEMS of them and MAX_MESSAGE characters in all, and how many more
    there are (1,000 bad layers are one mistake; a whole error stays under 2 KB)."""
    shown, size = [], 0
    for problem in problems[:MAX_PROBLEMS]:
        if shown and size + len(problem) > MAX_MESSAGE:
            break
        shown.append(problem)
        size += len(problem) + 8  # "error: " and the line's end
    if len(shown) == len(problems):
        return shown
    return [*shown, f"{source.name}: … and {len(problems) - len(shown):,} more problems"]


def check_shapes(config: Config, source: Source) -> None:
    """Walk the layer stack (no TensorFlow); a shape error, or an output that is not one vector of class
    scores per image, is located at its layer in the file."""
    try:
        check_class_scores(config.model, infer(config.model))
    except ShapeError as exc:
        path = ("model", "layers", exc.index) if exc.index is not None else ("model",)
        raise ShapeError(f"{source.locate(path)}: {exc.message}", index=exc.index) from None


def check_layer_names(config: Config, source: Source) -> None:
    """Every layer's name (given or Keras' default) is unique; a repeat is located at its layer."""
    problems = name_problems(layer_names(config.model.layers))
    if problems:
        located = [f"{source.locate(('model', 'layers', index))}: model.layers[{index}]: {message}"
                   for index, message in problems]
        raise ConfigError(at_most(located, source))


def check_outputs_and_views(config: Config, source: Source) -> None:
    """What the loss and the evaluation need of the model, each located: logits from a last layer without
    softmax, images for test-time augmentation, and a translation smaller than the image."""
    problems = []
    last = config.model.layers[-1]
    if config.train.loss.from_logits and (last.type == "Softmax" or last.args.kwargs().get("activation") == "softmax"):
        index = len(config.model.layers) - 1
        problems.append(f"{source.locate(('train', 'loss', 'from_logits'))}: train.loss.from_logits: true, but "
                        f"model.layers[{index}] ({last.type}) ends in a softmax: its outputs are probabilities, "
                        "not logits; remove the softmax or set from_logits: false")
    views, shape = config.evaluate.tta if config.evaluate else [], config.model.input_shape
    if views and len(shape) < 2:
        problems.append(f"{source.locate(('evaluate', 'tta'))}: evaluate.tta: views are flipped or shifted images, "
                        f"but model.input_shape {shape} is not an image ([height, width(, channels)])")
    elif "translate" in views and config.evaluate.translate_pixels >= min(shape[:2]):
        problems.append(f"{source.locate(('evaluate', 'translate_pixels'))}: evaluate.translate_pixels: "
                        f"{config.evaluate.translate_pixels} must be smaller than the {shape[0]}x{shape[1]} image")
    if problems:
        raise ConfigError(problems)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config file, including its layer names and the shapes of its stack."""
    raw, source = read_config_file(path)
    raw = apply_overrides(raw, list(overrides or []), source)
    config = validate(raw, source)
    check_layer_names(config, source)
    check_shapes(config, source)
    check_outputs_and_views(config, source)
    return config


SMOKE_STEPS = 3  # training steps of a --smoke run


def smoke_config(config: Config) -> Config:
    """The same model on a few batches of synthetic data, one epoch: proves the config runs (--smoke).

    Synthetic classes are named 0, 1, ... unless data.class_names names them: class weights given for
    other names are weighed "auto" instead (the weighting still runs, and no real class name is an error).
    """
    batch = config.train.batch_size
    synthetic = config.data.synthetic.model_copy(update={"train_examples": batch * SMOKE_STEPS,
                                                         "test_examples": batch})
    weights = config.train.class_weight
    if isinstance(weights, dict) and not set(weights) <= set(config.data.class_names or ()):
        weights = "auto"
    return config.model_copy(update={
        "data": config.data.model_copy(update={"dataset": "synthetic", "synthetic": synthetic}),
        "train": config.train.model_copy(update={"epochs": 1, "class_weight": weights}),
    })


class _Dumper(yaml.SafeDumper):
    """Block style for sections; flow style for short leaf mappings and lists of scalars."""

    def represent_dict(self, data):  # noqa: D102
        leaf = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(
            isinstance(i, (dict, list)) for i in v)) for v in data.values())
        return self.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=leaf and len(data) <= 4)

    def represent_list(self, data):  # noqa: D102
        scalars = not any(isinstance(item, (dict, list)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=scalars)


_Dumper.add_representer(dict, _Dumper.represent_dict)
_Dumper.add_representer(list, _Dumper.represent_list)


def to_yaml(config: Config) -> str:
    """The resolved config as YAML, in the section order of the schema."""
    data = config.model_dump(mode="json", exclude_none=True)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def config_from_yaml_text(text: str, name: str) -> Config:
    raw, source = parse_yaml(text, name)
    return validate(raw, source)
