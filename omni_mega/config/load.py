"""YAML -> typed RunConfig, with `--set a.b=c` overrides. Unknown keys and wrong types fail naming the field."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from omni_mega.config.checks import ConfigError
from omni_mega.config.schema import RunConfig


def _closest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(valid))}"


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(hint):
                return None
            raise ConfigError(f"{path}: may not be null")
        errors = []
        for opt in options:
            try:
                return _convert(value, opt, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {_convert(k, key_hint, path): _convert(v, value_hint, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Builds dataclass `cls` from a mapping, recursively; rejects unknown keys with the closest valid name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(f"{where}: unknown key{_closest(str(key), valid)}")
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {item!r}: {key.strip()!r} has an empty part; expected key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: cannot parse the value {raw!r} as YAML: {_yaml_problem(e)}") from None
    return keys, value


def _is_list_field(keys: list[str]) -> bool:
    """Whether RunConfig's field at this path of names is a list (stages, a stage's data, ...)."""
    hint: Any = RunConfig
    for k in keys:
        if typing.get_origin(hint) is list:  # k picks an item (by index or name)
            hint = typing.get_args(hint)[0]
            continue
        hint = _unwrap_optional(hint)
        if not dataclasses.is_dataclass(hint):
            return False
        hint = typing.get_type_hints(hint).get(k)
        if hint is None:
            return False
    return typing.get_origin(_unwrap_optional(hint)) is list


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _list_index(items: list, key: str, item: str, where: str) -> int:
    """The position in `items` that `key` names: a number, or the `name` of a list item (stages.pretrain)."""
    if key.isdigit():
        if int(key) >= len(items):
            raise ConfigError(f"--set {item!r}: {where} has {len(items)} item{'s' * (len(items) != 1)}"
                              f"{f' (indices 0..{len(items) - 1})' if items else ''}, so there is no index {key}")
        return int(key)
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if key not in names:
        listed = ", ".join(str(n) for n in names if n is not None) or "none have a name"
        raise ConfigError(f"--set {item!r}: {where} has no item named {key!r}; names: {listed}")
    return names.index(key)


def _child(node: Any, keys: list[str], depth: int, item: str) -> Any:
    """The section `keys[depth]` inside `node` (created when missing), for an override to descend into."""
    key, where = keys[depth], ".".join(keys[:depth]) or "the config"
    if isinstance(node, list):
        return node[_list_index(node, key, item, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {where} is not a section (it holds {node!r})")
    if node.get(key) is None:
        if _is_list_field(keys[: depth + 1]):
            # Nothing to index: the list comes from the defaults, which an override of one item cannot see.
            path = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {item!r}: {path} is not set in the config file, so it has no items to change; "
                              f"set the whole list: --set '{path}=[...]'")
        node[key] = {}
    return node[key]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `a.b=c` overrides to the raw mapping (values parsed as YAML: 2, 1e-3, true, [a, b]). A list item is
    named by its index or by its `name` field: stages.1.steps=5 and stages.cooldown.steps=5 are the same."""
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for depth in range(len(keys) - 1):
            node = _child(node, keys, depth, item)
        last, where = keys[-1], ".".join(keys[:-1]) or "the config"
        if isinstance(node, list):
            node[_list_index(node, last, item, where)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {item!r}: {where} is not a section (it holds {node!r})")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what PyYAML found, without its multi-line excerpt of the source."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(e).splitlines()[0]
    return " ".join(text.split())


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file, or a ConfigError naming the file and what is wrong with it."""
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; expected a YAML file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}") \
            from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark, ctx = e.problem_mark or e.context_mark, e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        # The problem is often found far from its cause (an unclosed bracket is reported at the end of the file).
        opened = ""
        if ctx and ctx != mark:
            opened = f" (the construct began at line {ctx.line + 1}, column {ctx.column + 1})"
        raise ConfigError(f"{where}: YAML syntax error: {_yaml_problem(e)}{opened}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {_yaml_problem(e)}") from None
    if loaded is None:
        # An empty file would silently plan the built-in defaults (100 steps of a default model).
        raise ConfigError(f"config file {path} is empty (no settings, only blank lines or comments)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML run config (None: all defaults), applies overrides and returns the typed, checked config.
    Every problem with the file or an override is a ConfigError naming it."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
