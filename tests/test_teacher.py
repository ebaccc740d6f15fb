"""ClapTeacher against laion-clap itself: its own CLAP model, input preparation and forward."""
import hashlib
import logging

import numpy as np
import pytest
import torch
import torchaudio

from pipeline.teacher import HTSAT_MEL, ClapTeacher, import_clap_module, model_config
from pipeline.teacher_input import fusion_chunk_starts, repeatpad
from cache_tools.errors import CheckpointError

torch.set_num_threads(1)
ATOL = 1e-5                                    # fp32, same weights, same input: only summation order differs


@pytest.fixture(scope="module")
def laion():
    """laion-clap's `clap_module.model` and `training.data` (get_audio_features), imported offline."""
    _, clap_model = import_clap_module()       # puts the package folder on sys.path, HF_HUB_OFFLINE=1
    import training.data as clap_data
    return clap_model, clap_data


def official_checkpoint(clap_model, fusion: bool, path, seed=123):
    """laion-clap's own CLAP (audio config from the package, a text config that needs no download),
    weights perturbed so that every audio tensor differs from a fresh init, saved the official way."""
    cfg = model_config("HTSAT-tiny")
    torch.manual_seed(seed)
    clap = clap_model.CLAP(embed_dim=cfg["embed_dim"], audio_cfg=cfg["audio_cfg"],
                           text_cfg={**cfg["text_cfg"], "model_type": "transformer"},
                           enable_fusion=fusion, fusion_type="aff_2d" if fusion else "None")
    with torch.no_grad():
        for name, t in clap.audio_branch.state_dict().items():
            if name.startswith(("spectrogram_extractor", "logmel_extractor")) or not t.is_floating_point():
                continue                       # the fixed STFT / mel bases stay as built
            if "running_var" in name:
                t.copy_(0.5 + torch.rand_like(t))
            else:
                t.add_(0.05 * torch.randn_like(t))
    clap.eval()
    sd = {f"module.{k}": v for k, v in clap.state_dict().items()}
    assert any(k.startswith("module.text_branch.") for k in sd)      # must be ignored by the loader
    torch.save({"epoch": 7, "name": "test", "state_dict": sd}, path)
    return clap, cfg


def laion_reference(clap, cfg, clap_data, wave16k: torch.Tensor, fusion: bool) -> dict:
    """laion-clap's outputs on its own preparation (hook.py's get_audio_embedding_from_data steps)."""
    wave48k = torchaudio.functional.resample(wave16k, 16000, 48000)
    samples = []
    for w in wave48k:
        w = clap_data.int16_to_float32_torch(clap_data.float32_to_int16_torch(w))
        samples.append(clap_data.get_audio_features(
            {}, w, 480000, data_truncating="fusion" if fusion else "rand_trunc",
            data_filling="repeatpad", audio_cfg=cfg["audio_cfg"]))
    batch = {k: torch.cat([s[k].unsqueeze(0) for s in samples]) for k in samples[0]}
    with torch.no_grad():
        return {"input": batch, **clap.audio_branch(batch, device="cpu")}


@pytest.mark.parametrize("fusion", [False, True], ids=["plain", "fusion"])
def test_grid_matches_laion_clap(laion, tmp_path, monkeypatch, fusion):
    clap_model, clap_data = laion
    path = tmp_path / "clap.pt"
    clap, cfg = official_checkpoint(clap_model, fusion, path)
    teacher = ClapTeacher.from_checkpoint(path, fusion=fusion)
    assert teacher.checkpoint_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    # laion-clap draws long-clip windows at random: make its draws the fixed ones the teacher uses
    monkeypatch.setattr(np.random, "randint", lambda lo, hi: (hi - 1) // 2)         # centre crop
    monkeypatch.setattr(np.random, "choice", lambda a: a[len(a) // 2])             # middle chunks
    gen = torch.Generator().manual_seed(0)
    for seconds in (1.3, 10.0, 12.5):         # repeatpad, exact window, long (crop / fusion chunks)
        wave = 0.5 * torch.randn(2, int(seconds * 16000), generator=gen).clamp(-2, 2)
        ref = laion_reference(clap, cfg, clap_data, wave, fusion)
        ours = teacher.model_input(wave)
        for key in ref["input"]:
            torch.testing.assert_close(ours[key], ref["input"][key], atol=1e-6, rtol=0, msg=f"{key} @ {seconds}s")
        grid = teacher.token_grid(wave)                                   # [B, Tt, Ft, D]
        assert grid.shape == (2, 32, 2, 768) and grid.dtype == torch.float32
        fine_ref = ref["fine_grained_embedding"]                          # [B, frames, D]
        ratio = fine_ref.shape[1] // grid.shape[1]
        fine = grid.mean(2).repeat_interleave(ratio, dim=1)               # [B, Tt, D] -> [B, frames, D]
        torch.testing.assert_close(fine, fine_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(grid.mean((1, 2)), ref["embedding"], atol=ATOL, rtol=0)
        assert not torch.allclose(grid[:, :, 0], grid[:, :, 1], atol=1e-3)     # two distinct frequency rows


@pytest.fixture(scope="module")
def untrained():
    return ClapTeacher.from_checkpoint(None, seed=0)


def test_refuses_mismatched_checkpoint(tmp_path, untrained):
    net = untrained.net
    sd = {f"module.audio_branch.{k}": v for k, v in net.state_dict().items()}
    dropped = "layers.3.blocks.1.mlp.fc2.weight"
    del sd[f"module.audio_branch.{dropped}"]
    sd["module.audio_branch.fusion_model.extra.weight"] = torch.zeros(3)
    sd["module.text_branch.whatever"] = torch.zeros(1)                    # ignored, not "unexpected"
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        ClapTeacher.from_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and dropped in msg and "fusion_model.extra.weight" in msg
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg and "text_branch" not in msg

    torch.save({"state_dict": {"module.text_branch.w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no 'audio_branch"):
        ClapTeacher.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        ClapTeacher.from_checkpoint(tmp_path / "absent.pt")
    sd = {f"audio_branch.{k}": v for k, v in net.state_dict().items()}     # bare sd, no prefix: loads
    sd["audio_branch.head.weight"] = torch.zeros(5, 5)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatches.*head.weight"):
        ClapTeacher.from_checkpoint(path)


def test_untrained_teacher_is_seeded(caplog, untrained):
    wave = torch.linspace(-1, 1, 16000).sin().repeat(2, 1) * torch.tensor([[0.3], [0.9]])   # (2, 1 s)
    before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="pipeline.teacher"):
        b = ClapTeacher.from_checkpoint(None, seed=0)
    assert "no CLAP semantics" in caplog.text and "untrained:seed=0" in caplog.text
    assert torch.equal(torch.random.get_rng_state(), before)             # caller's RNG untouched
    a, c = untrained, ClapTeacher.from_checkpoint(None, seed=1)
    assert a.checkpoint_id == "untrained:seed=0" and c.checkpoint_id == "untrained:seed=1"
    ga, gb, gc = a.token_grid(wave), b.token_grid(wave), c.token_grid(wave)
    assert torch.equal(ga, gb) and torch.equal(a.token_grid(wave), ga)   # same seed / same input: same grid
    assert not torch.allclose(ga, gc, atol=1e-2)
    assert a.describe()["checkpoint_sha256"] == "untrained:seed=0" and a.describe()["checkpoint"] is None


@pytest.fixture(scope="module")
def fused():
    return ClapTeacher.from_checkpoint(None, fusion=True)


def test_fusion_long_clip_under_autocast(fused, caplog):
    """laion-clap's 2-D fusion fails under autocast (index_put dtypes) on a long clip: fp32 instead."""
    wave = 0.3 * torch.randn(1, 200000, generator=torch.Generator().manual_seed(1))    # 12.5 s
    ref = fused.token_grid(wave)
    fused.amp_dtype = torch.bfloat16
    try:
        out = fused.token_grid(wave)
    finally:
        fused.amp_dtype = None
    assert torch.equal(out, ref) and "runs it in fp32" in caplog.text


def test_geometry_from_configs(fused, untrained):
    base = ClapTeacher.from_checkpoint(None, model="HTSAT-base")
    assert (base.dim, base.grid) == (1024, (32, 2))                      # (Tt, Ft), derived, as documented
    assert base.mel == untrained.mel == HTSAT_MEL      # the stand-in constant is what the configs give
    assert fused.mel["htk"] is True and fused.name == "laion-clap HTSAT-tiny fusion"
    d = fused.describe()
    assert d["grid"] == [32, 2] and d["dim"] == 768 and d["teacher_mel"] == fused.mel == {**HTSAT_MEL, "htk": True}
    with pytest.raises(CheckpointError, match="HTSAT-nano"):
        ClapTeacher.from_checkpoint(None, model="HTSAT-nano")
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        fused.token_grid(torch.zeros(16000))
    with pytest.raises(ValueError, match="int16"):
        fused.token_grid(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN"):
        fused.token_grid(torch.full((1, 16000), float("nan")))


def test_layout_helpers():
    w = torch.tensor([1.0, 2.0, 3.0])
    assert repeatpad(w, 10).tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 0]
    assert repeatpad(w, 3).tolist() == [1, 2, 3]
    assert fusion_chunk_starts(total_frames=1010, chunk_frames=1001) == [2, 5, 8]   # thirds of 0..9
    assert fusion_chunk_starts(total_frames=1002, chunk_frames=1001) == [0, 1, 0]   # empty third -> 0
