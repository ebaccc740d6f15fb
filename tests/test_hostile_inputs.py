"""Messy and hostile inputs get one `error:` line, never a traceback; the API takes what callers pass;
files are written with the user's umask (issue 20, items 6 (non-finite weights), 7, 9, 10).

Every test makes its own odd files: non-UTF-8 names, broken label CSVs, checkpoints made only of
allow-listed types with wrong contents, odd export config.json values, NaN weights."""
from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from cache_tools.atomic import atomic_path, atomic_write_text
from cache_tools.errors import CheckpointError, ConfigError, InputFileError
from pipeline.app.cli import app
from pipeline.readers.folder import read_folder
from train.model.checkpoint import load_encoder, save_checkpoint
from train.model.models_vit import AudioViT
from train.use import hear
from train.use.embed import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(r, *needles: str) -> str:
    """Exit 1 with one `error:` line naming every needle, and no exception but the CLI's own exit."""
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(lines) == 1 and "Traceback" not in r.output, r.output[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def vit_state(D: int = 64, depth: int = 1, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return dict(AudioViT(target_length=128, embed_dim=D, depth=depth, num_heads=1).state_dict())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "checkpoint.pt"
    save_checkpoint(path, {"kind": "finetune", "model": vit_state(), "norm": {"mean": -5.0, "std": 4.0}})
    return path


def tone(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# ---------------------------------------------------------------- item 7: the Python API


def test_api_scales_integer_pcm_and_takes_numpy(ckpt):
    enc = load_pretrained(ckpt)
    x = tone()
    ref = enc.embed(torch.from_numpy(x), 16000).clip
    pcm16 = np.round(x * 32767).astype(np.int16)
    for wave in (pcm16, torch.from_numpy(pcm16), (pcm16.astype(np.int32) << 16), x.astype(np.float64)):
        got = enc.embed(wave, 16000).clip
        assert torch.nn.functional.cosine_similarity(got, ref).item() > 0.999
    u8 = np.clip(np.round(x * 127) + 128, 0, 255).astype(np.uint8)              # 8-bit PCM: (x - 128) / 128
    assert torch.equal(enc.embed(u8, 16000).clip, enc.embed((u8.astype(np.float32) - 128) / 128, 16000).clip)
    assert torch.equal(enc.embed(pcm16, 16000).clip, enc.embed(pcm16 / np.float32(32768), 16000).clip)
    raw = enc.embed(pcm16.astype(np.float32), 16000).clip                      # what int16 used to give
    assert torch.nn.functional.cosine_similarity(raw, ref).item() < 0.99
    model = hear.load_model(str(ckpt))
    batch = np.stack([pcm16, pcm16])                                          # numpy [2, n] int16
    scene = hear.get_scene_embeddings(batch, model)
    assert torch.equal(scene, hear.get_scene_embeddings(torch.from_numpy(batch / np.float32(32768)), model))
    emb, ts = hear.get_timestamp_embeddings(batch, model)
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 2


def test_api_refuses_what_it_cannot_use(ckpt):
    enc = load_pretrained(ckpt)
    x = tone()
    for sr in (0, -16000, 16000.5, float("nan"), True, "16000"):
        with pytest.raises(ConfigError, match="sample rate"):
            enc.embed(x, sr)
    with pytest.raises(ConfigError, match="at least one clip"):
        enc.embed(np.zeros((0, 16000), np.float32), 16000)
    for mb in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="max_batch"):
            enc.embed(x, 16000, max_batch=mb)
    for layer in (1.5, "0", True):
        with pytest.raises(ConfigError, match="layer"):
            enc.embed(x, 16000, layer=layer)
    for hop in ("1", float("nan"), 0.0, True):
        with pytest.raises(ConfigError, match="hop"):
            enc.embed(x, 16000, hop=hop)
    for bad in (x.astype(np.int64), x > 0, x.astype(np.complex64)):
        with pytest.raises(ConfigError, match="dtype"):
            enc.embed(bad, 16000)
    for norm in (("a", 1.0), (1.0,), "audioset"):
        with pytest.raises(ConfigError, match="give \\(mean, std\\)"):
            load_pretrained(ckpt, norm=norm)
    model = hear.load_model(str(ckpt))
    with pytest.raises(ConfigError, match="at least one clip"):
        hear.get_scene_embeddings(np.zeros((0, 16000), np.float32), model)
    with pytest.raises(ConfigError, match="HEAR passes"):
        hear.get_scene_embeddings(x, model)


# ---------------------------------------------------------------- item 9: one line, not a traceback


def test_non_utf8_file_names_are_one_line(ckpt, tmp_path):
    """A file name that is not UTF-8 (Latin-1 é) is named, printable, before any work is done."""
    d = tmp_path / "audio" / "dog"
    d.mkdir(parents=True)
    sf.write(d / "ok.wav", tone(), 16000)
    bad = os.path.join(os.fsencode(d), b"caf\xe9.wav")
    sf.write(bad, tone(), 16000, format="WAV")
    out = tmp_path / "e.h5"
    for _ in range(2):                                                       # a rerun says the same
        line = one_error_line(cli("embed", tmp_path / "audio", "--ckpt", ckpt, "--out", out),
                              "caf\\xe9.wav", "not valid UTF-8")
    assert not out.exists()
    odd_out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"\xe9mb.h5"))     # a non-UTF-8 --out works
    r = cli("embed", d / "ok.wav", "--ckpt", ckpt, "--out", odd_out)
    assert r.exit_code == 0 and "mb.h5: 1 clips embedded" in r.output, (repr(r.exception), r.output[-500:])
    (tmp_path / "audio" / "cat").mkdir()
    sf.write(tmp_path / "audio" / "cat" / "x.wav", tone(), 16000)
    one_error_line(cli("prepare", "folder", "--root", tmp_path / "audio", "--out", tmp_path / "s.h5"),
                   "caf\\xe9.wav", "not valid UTF-8")
    assert line.startswith("error: ")


@pytest.mark.parametrize("body, needle", [
    (b"file,label\na.wav,dog,extra\n", "labels.csv:2: 3 fields, the header names 2"),
    (b"file,label\na.wav,caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    (b"file,label\na.wav," + b"x" * (128 * 1024 + 1) + b"\n", "labels.csv:2: not a readable CSV row (field larger"),
])
def test_labels_csv_oddities_are_one_line(tmp_path, body, needle):
    sf.write(tmp_path / "a.wav", tone(), 16000)
    (tmp_path / "labels.csv").write_bytes(body)
    with pytest.raises(InputFileError, match=None) as err:
        read_folder(tmp_path, tmp_path / "labels.csv")
    assert needle in str(err.value)
    one_error_line(cli("prepare", "folder", "--root", tmp_path, "--labels", tmp_path / "labels.csv",
                       "--out", tmp_path / "s.h5"), needle)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_max_seconds_out_of_range_is_one_line(ckpt, tmp_path, value):
    sf.write(tmp_path / "a.wav", tone(), 16000)
    one_error_line(cli("embed", tmp_path / "a.wav", "--ckpt", ckpt, "--out", tmp_path / "e.h5", "--max-seconds",
                       value), f"--max-seconds {float(value)}")
    assert not (tmp_path / "e.h5").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "600", "-1"])
def test_clip_seconds_out_of_range_is_one_line(tmp_path, value):
    (tmp_path / "dog").mkdir()
    sf.write(tmp_path / "dog" / "a.wav", tone(), 16000)
    one_error_line(cli("prepare", "folder", "--root", tmp_path, "--clip-seconds", value, "--out",
                       tmp_path / "s.h5"), f"--clip-seconds {float(value)}", "(0, 10.24]")


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files of allow-listed types only (tensors, dicts, numbers, strings, argparse.Namespace) whose
    contents are wrong -> (path, what the error must say)."""
    sd = vit_state(D=128)
    nan = dict(sd)
    nan["blocks.0.mlp.fc2.weight"] = sd["blocks.0.mlp.fc2.weight"].clone()
    nan["blocks.0.mlp.fc2.weight"][0, 0] = float("nan")
    cases = {
        "heads7": ({"model": sd, "model_args": {"num_heads": 7}}, "num_heads=7 does not divide the 128-d"),
        "heads_text": ({"model": sd, "model_args": {"num_heads": "12"}}, "num_heads='12'"),
        "norm_text": ({"model": sd, "norm": {"mean": "loud", "std": 4.0}}, "normalisation mean is 'loud'"),
        "norm_str": ({"model": sd, "norm": "audioset"}, "`norm` is 'audioset', not {mean, std}"),
        "weight_text": ({"model": {**sd, "norm.weight": "ones"}}, "`norm.weight` is a str, not a tensor"),
        "nan": ({"model": nan, "norm": {"mean": -5.0, "std": 4.0}}, "holds NaN or infinite weights"),
        "int_keys": ({"model": {0: sd["cls_token"]}}, "non-text keys"),
    }
    out = {}
    for name, (ck, needle) in cases.items():
        save_checkpoint(tmp_path / f"{name}.pt", ck)
        out[name] = (tmp_path / f"{name}.pt", needle)
    return out


def test_checkpoints_with_wrong_contents_are_one_line(tmp_path):
    for name, (path, needle) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_pretrained(path)
        assert str(err.value).startswith(f"{path}: ") and needle in str(err.value), (name, str(err.value))
        one_error_line(cli("export", "--ckpt", path, "--out", tmp_path / f"x-{name}"), str(path), needle)
        assert not (tmp_path / f"x-{name}" / "model.safetensors").exists()
    sd = vit_state(D=128)
    odd = argparse.Namespace(dataset=["audioset"], model=7, norm_pix_loss="yes")   # AudioMAE args, odd fields
    save_checkpoint(tmp_path / "odd_args.pth", {"model": sd, "args": odd})
    enc = load_pretrained(tmp_path / "odd_args.pth")
    assert enc.norm_source == "AudioMAE's AudioSet constants (default for AudioMAE files)"
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_encoder(tmp_path / "nan.pt")                                  # probe / finetune --init


def test_export_config_json_odd_values_are_one_line(ckpt, tmp_path):
    good = tmp_path / "exp"
    assert cli("export", "--ckpt", ckpt, "--out", good).exit_code == 0
    cfg = json.loads((good / "config.json").read_text())
    cases = [
        (lambda c: c["normalization"].update(mean="loud"), "normalisation mean is 'loud'"),
        (lambda c: c["normalization"].update(std=-1.0), "std=-1.0 are not usable"),
        (lambda c: c["normalization"].update(std=float("nan")), "are not usable"),
        (lambda c: c.update(supmam=[1, 2]), "no `normalization` / `supmam` objects"),
        (lambda c: c.update(normalization=None), "no `normalization` / `supmam` objects"),
        (lambda c: c["supmam"].update(num_heads=7), "num_heads=7 does not divide"),
        (lambda c: c["supmam"].update(num_heads="1"), "num_heads='1'"),
        (lambda c: c["supmam"].update(depth=20001), "depth=20001 (the weights: 1)"),
        (lambda c: c["supmam"].update(embed_dim=32768), "embed_dim=32768 (the weights: 64)"),
    ]
    for k, (edit, needle) in enumerate(cases):
        d = tmp_path / f"odd{k}"
        d.mkdir()
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
        c = json.loads(json.dumps(cfg))
        edit(c)
        (d / "config.json").write_text(json.dumps(c))
        with pytest.raises(CheckpointError) as err:
            load_pretrained(d)
        assert needle in str(err.value), (k, str(err.value))
        one_error_line(cli("embed", tmp_path, "--ckpt", d, "--out", tmp_path / f"o{k}.h5"), needle)
    (good / "config.json").write_bytes(b'{"normalization": "caf\xe9"}')
    with pytest.raises(CheckpointError, match="not valid UTF-8 JSON"):
        load_pretrained(good)


def test_long_out_name_and_dangling_symlink_are_one_line(ckpt, tmp_path):
    sf.write(tmp_path / "a.wav", tone(), 16000)
    long_out = tmp_path / ("e" * 242 + ".h5")                                 # 245 characters: legal, its
    r = cli("embed", tmp_path / "a.wav", "--ckpt", ckpt, "--out", long_out)   # .report.json sibling is not
    one_error_line(r, str(long_out), "the name is too long")
    assert "clip/s" not in r.output and sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]   # nothing done
    r = cli("export", "--ckpt", ckpt, "--out", tmp_path / ("x" * 252))
    one_error_line(r, "the name is too long")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    one_error_line(cli("export", "--ckpt", ckpt, "--out", dangling), str(dangling))
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- item 10: the user's umask


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(ckpt, tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"x")
        save_checkpoint(tmp_path / "checkpoint.pt", {"model": vit_state()})
        assert cli("export", "--ckpt", ckpt, "--out", tmp_path / "exp").exit_code == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "report.json", tmp_path / "w.bin", tmp_path / "checkpoint.pt",
              tmp_path / "exp" / "model.safetensors", tmp_path / "exp" / "config.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, (p, oct(p.stat().st_mode))


def test_file_system_errors_on_user_paths_are_one_line(monkeypatch, tmp_path):
    """An OSError the file system gives for a path the user chose is one line; any other stays a bug."""
    import errno
    import train.use.embed as embed_mod

    def refuse(path, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(embed_mod, "load_pretrained", refuse)
    one_error_line(cli("embed", tmp_path, "--ckpt", tmp_path / "ck.pt", "--out", tmp_path / "o.h5"),
                   f"{tmp_path / 'ck.pt'}: Read-only file system")

    def bug(path, **kw):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(embed_mod, "load_pretrained", bug)
    r = cli("embed", tmp_path, "--ckpt", tmp_path / "ck.pt", "--out", tmp_path / "o.h5")
    assert isinstance(r.exception, OSError) and r.exception.errno == errno.EBADF


def test_evaluate_checks_model_args_against_the_weights(tmp_path):
    """A fine-tuning checkpoint's model_args are checked before AudioViT(**model_args) is built: a
    claimed depth of 20000 or a 32768-d width no longer allocate, odd arguments are named."""
    from train.finetune.evaluate import evaluate_checkpoint, rebuild
    from train.model.models_vit import describe
    torch.manual_seed(0)
    vit = AudioViT(target_length=128, embed_dim=64, depth=1, num_heads=1)
    vit.reset_head(3)                                                           # as fine-tuning does
    args, sd = describe(vit), vit.state_dict()
    assert rebuild(args, sd).head.out_features == 3                              # the honest file still loads
    for change, needle in (({"depth": 20000}, "depth=20000, the weights say 1"),
                           ({"embed_dim": 32768}, "embed_dim=32768, the weights say 64"),
                           ({"num_heads": 7}, "num_heads=7 does not divide"),
                           ({"target_length": 10 ** 9}, "target_length=1000000000, the weights say 128"),
                           ({"qk_scale": 2}, "['qk_scale'] are not AudioViT's arguments")):
        with pytest.raises(CheckpointError, match=None) as err:
            rebuild({**args, **change}, sd, tmp_path / "ck.pt")
        assert needle in str(err.value) and str(tmp_path / "ck.pt") in str(err.value)
    nan = {k: v.clone() for k, v in sd.items()}
    nan["head.weight"][0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="head.weight` holds NaN or infinite"):
        rebuild(args, nan)
    save_checkpoint(tmp_path / "odd.pt", {"kind": "finetune", "model_args": args, "model": sd, "config": "esc50"})
    one_error_line(cli("evaluate", "--ckpt", tmp_path / "odd.pt"), "odd.pt", "names no known task")
    with pytest.raises(ConfigError, match="names no known task"):
        evaluate_checkpoint(tmp_path / "odd.pt")
