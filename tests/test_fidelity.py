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
from train.pretrain.config import load_pretrain_config

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


def item_rows(text: str, first: str) -> dict[str, list[str]]:
    """{first cell: cells} of the tables whose header starts with `first` (e.g. "item", "row")."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif header[0].lower() == first and not set(cells) <= {"---", ""}:
            rows[cells[0]] = cells
    return rows


def test_teacher_rows_say_what_the_targets_are():
    """The teacher's targets have a row each (model, checkpoint, layer, dim, grid, projection,
    normalisation, mel bank, alignment, padding), and the rows agree with the code and the presets."""
    from pipeline.teacher import HTSAT_MEL
    rows = item_rows(DOC.read_text(), "item")
    need = {"model", "checkpoint", "layer", "dim", "grid", "projection", "normalisation", "teacher_mel",
            "alignment", "padding"}
    assert need <= set(rows), f"teacher rows missing: {sorted(need - set(rows))}"
    value = {k: tomllib.loads(f"v = {rows[k][1].strip('`')}")["v"] for k in need}
    assert value["teacher_mel"] == HTSAT_MEL and value["dim"] == 768 and value["grid"] == [32, 2]
    src = (DOC.parent.parent / "pipeline" / "teacher.py").read_text()
    assert "tscam_conv.register_forward_pre_hook" in src and "tscam_conv" in rows["layer"][2]
    for preset in ("mam-clap", "supmam-clap"):
        cfg = load_pretrain_config(preset, [])
        assert (cfg.target_alignment, cfg.target_padding) == (value["alignment"], value["padding"]), preset
        assert not cfg.allow_untrained_teacher
    assert load_pretrain_config("supmam-clap-mini", []).allow_untrained_teacher


def test_gradient_share_table_is_measured_and_names_the_presets_reading():
    """docs/fidelity.md's gradient-share table has a measured row for each reading bench/grad_share.py
    runs, and the row marked chosen is the SupMAM-CLAP preset's reading (Eq. 1, Eq. 2, tau)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("grad_share", DOC.parent.parent / "bench" / "grad_share.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = item_rows(DOC.read_text(), "row")
    shown = {k.strip("`") for k in rows}
    assert set(bench.ROWS) <= shown, f"unmeasured rows: {sorted(set(bench.ROWS) - shown)}"
    for k in bench.ROWS:
        cells = rows[f"`{k}`"] if f"`{k}`" in rows else rows[k]
        assert all(float(c) > 0 for c in cells[2:4]), cells          # share at update 0 and after the run
    chosen = [k.strip("`") for k, c in rows.items() if "chosen" in c[-1] and k.strip("`").startswith("clap-")]
    assert len(chosen) == 1, chosen
    over = dict(o.split("=", 1) for o in bench.ROWS[chosen[0]][1])
    m = load_pretrain_config("supmam-clap", []).model
    for key, v in over.items():
        if key != "model.lambda_cls":
            assert str(getattr(m, key.removeprefix("model."))) == v, (key, v)
    assert m.lambda_cls == 1e-4 and load_pretrain_config("supmam", []).model.lambda_cls == 0.01
    sup = load_pretrain_config("supmam", []).model                  # Eq. 2 is one equation for both methods
    assert (sup.cls_reduction, sup.tau) == (m.cls_reduction, m.tau)
