"""`supmam ablate`: a sweep over ONE target store leaves every byte of it unchanged, and its tables
hold one row per configuration with the fine-tuned score. Tiny models and stores (T=128)."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.app.ablate import OPTIONS, TABLES, Run, pretrain_overrides, run_ablation, store_checksums, sweep
from tests.stores import TINY_PRETRAIN as TINY
from tests.stores import spc_stores, write_clips, write_targets


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablate")
    clips = write_clips(d / "pretrain.h5", 8)
    targets = write_targets(d / "pretrain.targets.zarr", clips)
    spc_stores(d, "spc2", 35, per_class=(2, 1, 1))
    return d, clips, targets


def test_store_checksums_see_a_one_byte_change(stores, tmp_path):
    import shutil
    _, _, targets = stores
    copy = tmp_path / "copy.zarr"
    shutil.copytree(targets, copy)
    before = store_checksums(copy)
    shard = max((p for p in copy.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)   # a shard
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    after = store_checksums(copy)
    assert set(before) == set(after)
    assert [k for k in before if before[k] != after[k]] == [str(shard.relative_to(copy))]


def test_lambda_sweep_reuses_one_store_unchanged(stores, tmp_path):
    torch.set_num_threads(1)
    d, clips, targets = stores
    before = store_checksums(targets)
    pre = [o for o in TINY if not o.startswith("log_every")] + ["batch_size=4", "log_every=1"]
    summary = run_ablation(d, tmp_path / "runs", tables="clap-lambda", steps=2, tasks=("spc2",),
                           pretrain_overrides=pre, clips=clips, targets=targets,
                           finetune_overrides={"spc2": ["epochs=1", "batch_size=8", "eval_batch_size=16"]})
    assert store_checksums(targets) == before
    assert summary["store_unchanged"] and summary["changed_files"] == []
    names = [r.name for r in sweep({"clap-lambda"})["clap-lambda"]]
    assert summary["tables"] == {"clap-lambda": names} and set(summary["results"]) == set(names)
    lambdas = sorted(summary["results"][n]["run"]["lambda_cls"] for n in names)
    assert lambdas == sorted(r.lambda_cls for r in sweep({"clap-lambda"})["clap-lambda"])
    table = (tmp_path / "runs" / "ablation.md").read_text()
    for n in names:   # each configuration trained its own checkpoint with its own lambda
        cfg = json.loads((tmp_path / "runs" / f"pretrain-{n}" / "config.json").read_text())["config"]
        lam = summary["results"][n]["run"]["lambda_cls"]
        assert cfg["model"]["lambda_cls"] == lam
        ft = json.loads((tmp_path / "runs" / f"ft-spc2-{n}" / "metrics.json").read_text())  # the fine-tune's record
        score = summary["results"][n]["scores"]["spc2"]
        assert score["metric"] == ft["metric"] == "accuracy" and score["score"] == pytest.approx(ft["score"])
        assert f"| clap+cls | 0.2 | {lam:g} | {ft['score']:.3f} |" in table.splitlines()   # its row
    assert table.count("| clap+cls | 0.2 |") == len(names)
    assert (tmp_path / "runs" / "ablation.png").stat().st_size > 1000


def test_sweep_tables_are_the_papers_grids():
    """Tables 2-5 as the paper prints them (Xin, Peng, Lu 2023), the interpretation sweeps apart."""
    t = sweep(set(TABLES))
    assert list(t) == ["table2", "table3", "table4", "table5", "clap-lambda", "options"]
    grid = {k: [(r.preset, r.objectives, r.mask_ratio, r.lambda_cls) for r in rs] for k, rs in t.items()}
    assert grid["table2"] == [("mam-clap-mini", ("clap",), m, 0.0) for m in (0.1, 0.2, 0.3, 0.4)]
    assert grid["table3"] == [("supmam-mini", ("rec", "cls"), m, 0.01) for m in (0.2, 0.3, 0.4, 0.5, 0.6)]
    assert grid["table4"] == [("supmam-mini", o, m, 0.01) for m in (0.8, 0.4)
                              for o in (("rec",), ("cls",), ("rec", "cls"))]
    assert grid["table5"] == [("supmam-mini", ("rec", "cls"), 0.4, lam) for lam in (0.05, 0.02, 0.01, 0.005)]
    assert {r.preset for r in t["clap-lambda"] + t["options"]} == {"supmam-clap-mini"}
    assert len({r.name for rs in t.values() for r in rs}) == len({r for rs in t.values() for r in rs})
    assert Run("x", ("clap",), 0.2, 0.0).name == "clap-m0.2-l0"
    assert sweep({"table5"}) == {"table5": t["table5"]}


def test_tables_print_their_titles_paper_or_interpretation():
    from pipeline.app.ablate import ablation_tables
    scores = {"spc2": {"metric": "accuracy", "score": 0.5, "std": None}}
    runs = sweep({"table2", "options"})
    res = {r.name: {"run": r.__dict__ | {"objectives": list(r.objectives)}, "scores": scores}
           for rs in runs.values() for r in rs}
    text = ablation_tables({"store": "s", "store_unchanged": True, "results": res,
                            "tables": {k: [r.name for r in rs] for k, rs in runs.items()}})
    assert "## Table 2: MAM-CLAP mask ratio" in text
    assert "## Interpretation (not a paper table): readings the paper leaves open (SupMAM-CLAP)" in text


def test_options_table_switches_one_reading_per_row(stores, tmp_path):
    """One row per reading the paper leaves open, each run configured with exactly that option
    changed from the preset's (read back from each run's saved config), beside the preset's."""
    from train.pretrain.config import load_pretrain_config
    from tests.test_fidelity import flatten
    torch.set_num_threads(1)
    d, clips, targets = stores
    runs = sweep({"options"})["options"]
    assert [r.options for r in runs] == [()] + list(OPTIONS)
    keys = {k for row in OPTIONS for k, _ in row}
    assert keys == {"model.cls_reduction", "model.clap_dim_reduction", "model.clap_visible_from",
                    "model.tau", "target_alignment", "target_padding"}
    base = flatten(load_pretrain_config("supmam-clap-mini"))
    assert all(str(base[k]) != v for row in OPTIONS for k, v in row)  # each row really switches a reading
    pre = [o for o in TINY if not o.startswith("log_every")] + ["batch_size=4", "log_every=1"]
    summary = run_ablation(d, tmp_path / "runs", tables="options", steps=1, tasks=("spc2",),
                           pretrain_overrides=pre, clips=clips, targets=targets,
                           finetune_overrides={"spc2": ["epochs=1", "batch_size=8", "eval_batch_size=16"]})
    table = (tmp_path / "runs" / "ablation.md").read_text().splitlines()
    assert "| objectives | mask ratio | lambda_cls | options | spc2 accuracy |" in table
    for run in runs:
        saved = json.loads((tmp_path / "runs" / f"pretrain-{run.name}" / "config.json").read_text())["config"]
        ovs = pretrain_overrides(run, clips, targets, tmp_path, 0, "cpu", 1, pre)
        cfg = flatten(load_pretrain_config(run.preset, ovs))
        changed = {k for k in base if k in cfg and cfg[k] != base[k]}
        want = {k for k, _ in run.options}
        # the tiny test model's sizes and the run's own settings differ from the preset's; the readings are the row's
        assert changed & keys == want, run.name
        for key, value in run.options:
            node = saved
            for part in key.split("."):
                node = node[part]
            assert str(node) == value and str(cfg[key]) == value
        opts = ", ".join(f"{k}={v}" for k, v in run.options) or "defaults"
        assert any(row.startswith(f"| clap+cls | 0.2 | 0.0001 | {opts} | ") for row in table), opts
    assert summary["store_unchanged"] and set(summary["results"]) == {r.name for r in runs}


def test_unknown_tables_are_one_line_errors_before_any_run(stores, tmp_path):
    from typer.testing import CliRunner
    from pipeline.app.cli import app
    d, clips, targets = stores
    res = CliRunner().invoke(app, ["ablate", "--stores", str(d), "--runs", str(tmp_path / "runs"),
                                   "--tables", "table2,lamda"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip() == ("error: --tables table2,lamda: unknown ablation table(s) ['lamda']; "
                                  "known: table2, table3, table4, table5, clap-lambda, options (or paper, all)")
    assert not (tmp_path / "runs").exists()
