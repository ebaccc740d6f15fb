"""`supmam ablate`: a sweep over ONE target store leaves every byte of it unchanged, and its tables
hold one row per configuration with the fine-tuned score. Tiny models and stores (T=128)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.app.ablate import REDUCTIONS, Run, pretrain_overrides, run_ablation, store_checksums, sweep
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
    summary = run_ablation(d, tmp_path / "runs", tables="lambda", steps=2, tasks=("spc2",),
                           pretrain_overrides=pre, clips=clips, targets=targets,
                           finetune_overrides={"spc2": ["epochs=1", "batch_size=8", "eval_batch_size=16"]})
    assert store_checksums(targets) == before
    assert summary["store_unchanged"] and summary["changed_files"] == []
    names = [r.name for r in sweep({"lambda"})["lambda"]]
    assert summary["tables"] == {"lambda": names} and set(summary["results"]) == set(names)
    lambdas = sorted(summary["results"][n]["run"]["lambda_cls"] for n in names)
    assert lambdas == sorted(r.lambda_cls for r in sweep({"lambda"})["lambda"])
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


def test_sweep_tables_cover_the_paper_ablations():
    t = sweep({"mask", "objectives", "lambda", "reductions"})
    assert {tuple(r.objectives) for r in t["objectives"]} == {("rec",), ("cls",), ("rec", "cls"), ("clap",),
                                                              ("clap", "cls")}
    assert len({r.mask_ratio for r in t["mask"] if r.objectives == ("clap",)}) >= 3
    assert len({r.lambda_cls for r in t["lambda"]}) >= 3
    assert len({r.name for rs in t.values() for r in rs}) == len({r for rs in t.values() for r in rs})
    assert Run("x", ("clap",), 0.2, 0.0).name == "clap-m0.2-l0"
    assert np.isclose(min(r.mask_ratio for r in t["mask"]), 0.2)


def test_reductions_table_switches_one_option_per_row(stores, tmp_path):
    """One row per objective option the paper leaves open, each run configured with exactly that option
    changed from the preset's default (read back from each run's saved config), beside the defaults."""
    from train.pretrain.run import load_pretrain_config
    torch.set_num_threads(1)
    d, clips, targets = stores
    runs = sweep({"reductions"})["reductions"]
    assert [r.options for r in runs] == [()] + [(o,) for o in REDUCTIONS]
    assert {k for k, _ in REDUCTIONS} == {"model.cls_reduction", "model.clap_dim_reduction",
                                          "model.clap_visible_from", "model.tau"}
    base = load_pretrain_config("supmam-clap-mini").model
    pre = [o for o in TINY if not o.startswith("log_every")] + ["batch_size=4", "log_every=1"]
    summary = run_ablation(d, tmp_path / "runs", tables="reductions", steps=1, tasks=("spc2",),
                           pretrain_overrides=pre, clips=clips, targets=targets,
                           finetune_overrides={"spc2": ["epochs=1", "batch_size=8", "eval_batch_size=16"]})
    table = (tmp_path / "runs" / "ablation.md").read_text().splitlines()
    assert "| objectives | mask ratio | lambda_cls | options | spc2 accuracy |" in table
    for run in runs:
        saved = json.loads((tmp_path / "runs" / f"pretrain-{run.name}" / "config.json").read_text())["config"]
        cfg = load_pretrain_config(run.preset, pretrain_overrides(run, clips, targets, tmp_path, 0, "cpu", 1, pre))
        changed = {k for k in saved["model"] if saved["model"][k] != getattr(base, k)}
        want = {k.removeprefix("model.") for k, _ in run.options}
        # the tiny test model's sizes differ from the preset's; the objective options are the run's own
        assert changed - {"encoder_depth", "decoder_dim", "decoder_heads", "cls_hidden"} == want, run.name
        for key, value in run.options:
            field = key.removeprefix("model.")
            assert str(saved["model"][field]) == value and str(getattr(cfg.model, field)) == value
        opts = ", ".join(f"{k}={v}" for k, v in run.options) or "defaults"
        assert any(row.startswith(f"| clap+cls | 0.2 | 0.0001 | {opts} | ") for row in table), opts
    assert summary["store_unchanged"] and set(summary["results"]) == {r.name for r in runs}


def test_unknown_tables_are_one_line_errors_before_any_run(stores, tmp_path):
    from typer.testing import CliRunner
    from pipeline.app.cli import app
    d, clips, targets = stores
    res = CliRunner().invoke(app, ["ablate", "--stores", str(d), "--runs", str(tmp_path / "runs"),
                                   "--tables", "mask,lamda"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip() == ("error: --tables mask,lamda: unknown ablation table(s) ['lamda']; "
                                  "known: mask, objectives, lambda, reductions (or all)")
    assert not (tmp_path / "runs").exists()
