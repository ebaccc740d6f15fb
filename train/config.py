"""Typed configs: a dataclass per stage, filled from a TOML preset plus `key=value` overrides.

Unknown keys and values of the wrong type are rejected with a message that names the source
(file or command line) and the key. Nested dataclasses are addressed with dots (`model.encoder=tiny`).
A dataclass may check its values in `__post_init__` by raising ConfigError; numeric fields are
checked against the class's RANGES table (`check_ranges`: field -> Range, merged along the class
hierarchy; None values skipped, lists checked item by item), whose message gives the allowed range.

RunConfig holds what pretraining and fine-tuning share, under one name each; both stage configs
(train.pretrain.run.PretrainConfig, train.finetune.run.FinetuneConfig) extend it. The lr is not configured:
it is derived once from the base lr, `lr = blr * batch_size / 256` (AudioMAE's and mae's rule).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cache_tools.errors import ConfigError

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
Amp = Literal["bf16", "fp16", "off"]
EncoderSize = Literal["tiny", "small", "base"]       # train.model.models_vit.SIZES


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric config field: lo <= v (lo < v if lo_open), v <= hi (v < hi if hi_open)."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below and v == v                      # NaN is in no range

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, lo_open=True)
UNIT, UNIT_OPEN = Range(0, 1), Range(0, 1, hi_open=True)      # [0, 1] and [0, 1)


def check_ranges(obj: Any) -> None:
    """ConfigError for the first field of `obj` outside its range in the RANGES tables of its classes."""
    table: dict[str, Range] = {}
    for klass in reversed(type(obj).__mro__):
        table.update(vars(klass).get("RANGES", {}))
    for name, rng in table.items():
        value = getattr(obj, name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and v not in rng:
                raise ConfigError(f"{name} must be {rng}, got {value!r}")


@dataclass
class RunConfig:
    """The keys every training stage shares (each stage overrides the defaults that differ)."""
    preset: str = ""              # the preset this config was loaded from (set by the loader)
    stores: str = "data/stores"   # folder of the stores; an empty store path means the default name here
    run_dir: str = "runs"         # runs go to <run_dir>/<name>/
    name: str = ""                # "" = named after the preset
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    seed: int = 0
    num_workers: int = 4
    amp: Amp = "bf16"             # CUDA only; CPU runs in fp32
    batch_size: int = 32          # clips per optimizer update, over all ranks (and micro-steps)
    blr: float = 1e-3             # base lr: lr = blr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 60
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0        # max grad norm; 0 = off
    log_every: int = 20           # updates between log lines

    RANGES = {"seed": AT_LEAST_0, "num_workers": AT_LEAST_0, "batch_size": AT_LEAST_1, "blr": POSITIVE,
              "min_lr": AT_LEAST_0, "weight_decay": AT_LEAST_0, "betas": UNIT_OPEN, "epochs": AT_LEAST_1,
              "warmup_epochs": AT_LEAST_0, "grad_clip": AT_LEAST_0, "log_every": AT_LEAST_1}

    def __post_init__(self) -> None:
        check_ranges(self)
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                            and self.device[5:].isdigit())):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def lr(self) -> float:
        """The absolute peak lr (derived; printed and saved with the run)."""
        return self.blr * self.batch_size / 256


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; parse strings from the command line."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), where)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, origin, where)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, where)
        except ConfigError:
            pass
    raise ConfigError(f"{where}: {value!r} is not one of the types {args}")


def _coerce_sequence(value: Any, tp: Any, origin: type, where: str) -> list | tuple:
    (inner, *_) = typing.get_args(tp) or (Any,)
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    items = [_coerce(v, inner, where) for v in value]
    return tuple(items) if origin is tuple else items


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _as_number(tp: type, what: str):
    """A parser for int or float values: TOML numbers (no bools; no floats for an int) or strings."""
    def parse(value: Any, where: str):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return parse


def _as_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_SCALARS = {bool: _as_bool, int: _as_number(int, "an integer"), float: _as_number(float, "a number"), str: _as_str}


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hint = " (lr is derived: set blr, lr = blr * batch_size / 256)" if "lr" in unknown else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}{hint}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:                          # a __post_init__ check
        raise ConfigError(f"{where}: {e}") from None


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
        if "preset" in {f.name for f in dataclasses.fields(cls)}:
            data["preset"] = str(preset)
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


def preset_value(path_or_name: str | Path, kind: str, key: str, default: Any = None) -> Any:
    """One top-level value of a preset, `base` chain followed (e.g. a fine-tuning preset's task)."""
    return _read_toml(resolve_preset(path_or_name, kind), kind).get(key, default)


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
