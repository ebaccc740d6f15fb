"""Typed configs: a dataclass per stage, filled from a TOML preset plus `key=value` overrides.

Unknown keys and values of the wrong type are rejected with a message that names the source
(file or command line) and the key. Nested dataclasses are addressed with dots (`model.depth=4`).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from cache_tools.errors import SupmamError

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(SupmamError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; parse strings from the command line."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not {tp}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value: str) -> None:
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def resolve_preset(path_or_name: str | Path, kind: str) -> Path:
    """A path to a TOML file, or a preset name looked up in configs/<kind>/<name>.toml."""
    p = Path(path_or_name)
    if p.suffix == ".toml":
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        return p
    cand = CONFIG_DIR / kind / f"{path_or_name}.toml"
    if not cand.exists():
        known = sorted(q.stem for q in (CONFIG_DIR / kind).glob("*.toml"))
        raise ConfigError(f"no {kind} preset {path_or_name!r} (looked for {cand}); known: {known}")
    return cand


def load_config(cls: type[T], preset: str | Path | None, overrides: list[str] | None = None,
                kind: str = "pretrain") -> T:
    """Dataclass `cls` from the preset's TOML (optional `base = "other"` to inherit) and overrides."""
    data: dict = {}
    if preset is not None:
        path = resolve_preset(preset, kind)
        data = _read_toml(path, kind)
        where = str(path)
    else:
        where = "defaults"
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"command line: override {ov!r} is not key=value")
        k, v = ov.split("=", 1)
        _set_dotted(data, k.strip(), v.strip())
    try:
        return _build(cls, data, where)
    except ConfigError as e:
        raise ConfigError(f"{e} (preset {where}, overrides {overrides or []})") from None


def _read_toml(path: Path, kind: str, depth: int = 0) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if depth > 8:
        raise ConfigError(f"{path}: `base` chain too deep")
    merged = _read_toml(resolve_preset(base, kind), kind, depth + 1)
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
