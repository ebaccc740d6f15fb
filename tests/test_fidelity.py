"""docs/fidelity.md is the source table of every preset value: the presets may not drift from it.

Each row names presets, a dotted config key and a TOML literal; the test loads every preset the
way the CLI does and compares. Paper presets need a row for every setting; a mini preset needs a
row for every value that differs from its paper preset."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from train.config import CONFIG_DIR
from train.finetune.config import load_finetune_config
from train.pretrain.run import load_pretrain_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
# where a run reads and writes: not settings of the method
LOCATION = {"preset", "stores", "run_dir", "name", "device", "init", "clips", "targets",
            "train_clips", "valid_clips", "test_clips"}


def parse_rows(text: str) -> dict[tuple[str, str], tuple[object, int]]:
    """{(preset, key): (value, line number)} from every table whose header has preset | key | value here."""
    rows: dict[tuple[str, str], tuple[object, int]] = {}
    header: list[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(cells) <= {"---", ""} or not {"preset", "key", "value here"} <= set(header):
            continue
        row = dict(zip(header, cells))
        value = tomllib.loads(f"v = {row['value here'].strip('`')}")["v"]
        for preset in (p.strip() for p in row["preset"].split(",")):
            key = (preset, row["key"].strip("`"))
            assert key not in rows, f"{DOC}:{n}: {key} has two rows (first at line {rows[key][1]})"
            rows[key] = (value, n)
    return rows


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, f"{prefix}{f.name}."))
        elif f.name not in LOCATION:
            out[f"{prefix}{f.name}"] = list(v) if isinstance(v, tuple) else v
    return out


def load(kind: str, preset: str) -> dict[str, object]:
    if kind == "pretrain":
        return flatten(load_pretrain_config(preset, []))
    return flatten(load_finetune_config(preset, ["init=none"]))


def presets(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.toml"))


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


ROWS = parse_rows(DOC.read_text())
ALL = [(k, p) for k in ("pretrain", "finetune") for p in presets(k)]


@pytest.mark.parametrize("kind,preset", ALL)
def test_preset_matches_fidelity_table(kind, preset):
    values = load(kind, preset)
    paper = None if not preset.endswith("-mini") else load(kind, preset[: -len("-mini")])
    missing, drift = [], []
    for key, value in values.items():
        row = ROWS.get((preset, key))
        needs_row = paper is None or not same(paper.get(key), value)
        if row is None:
            if needs_row:
                missing.append(f"{key} = {value!r}")
        elif not same(row[0], value):
            drift.append(f"{key}: preset {value!r}, {DOC.name}:{row[1]} says {row[0]!r}")
    assert not drift, f"{preset}: values drifted from docs/fidelity.md: {drift}"
    assert not missing, f"{preset}: settings without a row in docs/fidelity.md: {missing}"


def test_every_row_names_a_real_setting():
    known = {(p, k) for kind, p in ALL for k in load(kind, p)}
    stray = sorted(set(ROWS) - known)
    assert not stray, f"rows in docs/fidelity.md that match no preset setting: {stray}"


def test_parser_reads_a_row():
    text = "| preset | key | value here | paper |\n|---|---|---|---|\n| a, b | `model.x` | `[1, 2]` | - |\n"
    assert parse_rows(text) == {("a", "model.x"): ([1, 2], 3), ("b", "model.x"): ([1, 2], 3)}
