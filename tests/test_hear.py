"""train.use.hear against the checks of the official `hearvalidator` (2021.0.2, validate.py), which
needs tensorflow and so is not installed here: the same checks, written out, plus clip lengths from
0.2 s to 60 s and batch independence."""
from __future__ import annotations

import pytest
import torch

from train.use import hear
from train.model.checkpoint import save_checkpoint
from train.model.models_vit import AudioViT
from cache_tools.errors import ConfigError

ACCEPTABLE_SAMPLE_RATE = [16000, 22050, 44100, 48000]     # hearvalidator's list


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    vit = AudioViT(target_length=256, embed_dim=64, depth=2, num_heads=1).eval()    # 2.56 s windows
    path = tmp_path_factory.mktemp("hear") / "checkpoint.pt"
    save_checkpoint(path, {"kind": "pretrain", "model": {f"encoder.{k}": v for k, v in vit.state_dict().items()},
                           "norm": {"mean": -5.0, "std": 4.0}})
    m = hear.load_model(str(path))
    m.to("cpu")                                            # the validator moves the model to its device
    return m


def white_noise(num: int, seconds: float, sr: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((num, int(seconds * sr)), generator=g) * 2 - 1.0                 # [-1, 1], as validate.py


def check_timestamps(emb: torch.Tensor, ts: torch.Tensor, n: int, size: int) -> None:
    """validate.py's torch_timestamp_embeddings checks (errors there are assertion failures here)."""
    assert emb.dtype == torch.float32 and emb.shape[0] == n
    assert emb.shape[:2] == ts.shape and emb.shape[2] == size
    diff = torch.diff(ts)
    avg = torch.mean(diff.float())
    assert torch.all(torch.abs(diff - avg) < 1e-3)          # regular spacing (validate.py: within 1 ms)


def test_load_model_and_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in ACCEPTABLE_SAMPLE_RATE
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 64
    with pytest.raises(ConfigError, match="model_file_path is required"):
        hear.load_model()
    with pytest.raises(ConfigError, match="layer 5"):
        hear.load_model(model.source, layer=5)


def test_validator_timestamp_and_scene_batches(model):
    audio = white_noise(16, 2.0, model.sample_rate)                                    # validate.py's batch
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    check_timestamps(emb, ts, 16, model.timestamp_embedding_size)
    assert ts.dtype == torch.float32 and ts[0, 0].item() == pytest.approx(87.5)       # ms, column centres
    assert torch.diff(ts).mean().item() == pytest.approx(160.0)                        # 16 frames of 10 ms
    scene = hear.get_scene_embeddings(white_noise(8, 3.74, model.sample_rate), model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)


@pytest.mark.parametrize("seconds", [0.2, 1.0, 3.74, 10.0, 60.0])
def test_clip_lengths(model, seconds):
    audio = white_noise(2, seconds, model.sample_rate, seed=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    check_timestamps(emb, ts, 2, model.timestamp_embedding_size)
    n_frames = 1 + (audio.shape[1] - 400) // 160
    assert emb.shape[1] == max(1, (n_frames + 8) // 16)                 # one per patch column
    assert torch.all(torch.diff(ts) > 0) and ts[0, -1] <= seconds * 1000
    assert torch.isfinite(emb).all()
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, emb.mean(dim=1), atol=1e-5, rtol=1e-5)   # clip = mean of its frames


def test_batch_independence(model):
    audio = white_noise(4, 3.0, model.sample_rate, seed=2)
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    for i in (0, 3):
        one, _ = hear.get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(one[0], emb[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hear.get_scene_embeddings(audio[i:i + 1], model)[0], scene[i],
                                   atol=1e-5, rtol=1e-5)
    changed = audio.clone()
    changed[1] = white_noise(1, 3.0, model.sample_rate, seed=9)[0]                    # other rows unaffected
    emb2, _ = hear.get_timestamp_embeddings(changed, model)
    torch.testing.assert_close(emb2[[0, 2, 3]], emb[[0, 2, 3]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(emb2[1], emb[1])
