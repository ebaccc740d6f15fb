"""The HEAR 2021 API over any encoder `train.use.embed.load_pretrained` reads.

    from train.use import hear
    model = hear.load_model("runs/pretrain-mam-clap/checkpoint.pt")     # or AudioMAE's .pth, an export dir
    scene = hear.get_scene_embeddings(audio, model)                    # audio [n, samples] at 16 kHz -> [n, D]
    emb, ts = hear.get_timestamp_embeddings(audio, model)              # [n, T, D], [n, T] milliseconds

Public API (https://hearbenchmark.com/hear-api.html)
----------
load_model(model_file_path="", layer=-1, hop=None, device=None) -> PretrainedEncoder (a torch.nn.Module)
    with .sample_rate (16000), .scene_embedding_size and .timestamp_embedding_size (both D, ints).
    `layer` and `hop` (seconds) are kept on the model and used by both functions below.
get_scene_embeddings(audio [n, samples] float in [-1, 1], model) -> [n, D] float32
    audio: torch or numpy; int16 / int32 / uint8 / int8 PCM is scaled to [-1, 1] (train.use.embed's
    rules); an empty batch or another shape is a ConfigError saying so.
    the clip embedding of train.use.embed (mean of the layer's patch tokens over the whole clip).
get_timestamp_embeddings(audio, model) -> (embeddings [n, T, D] float32, timestamps [n, T] float32 ms)
    one embedding per patch column (16 fbank frames = 160 ms apart for 16x16 patches), the
    frequency-mean of its tokens; timestamps are column centres (train.use.embed's rule), the same
    for every row. Long clips are windowed and stitched by train.use.embed; outputs are on the
    model's device, computed without gradients in eval mode.
"""
from __future__ import annotations

from torch import Tensor

from cache_tools.errors import ConfigError
from train.use.embed import PretrainedEncoder, as_float_wave, load_pretrained
from train.use.features import block_index


def load_model(model_file_path: str = "", layer: int = -1, hop: float | None = None,
               device: str | None = None, **kw) -> PretrainedEncoder:
    if not model_file_path:
        raise ConfigError("load_model: model_file_path is required (a pretrain / finetune checkpoint.pt, "
                         "AudioMAE's pretrained.pth / finetuned.pth or a `supmam export` folder)")
    model = load_pretrained(model_file_path, device=device or "cpu", **kw)
    block_index(model.depth, layer)                             # refuse a bad layer now, not at first call
    model.hear_layer, model.hear_hop = layer, hop
    model.scene_embedding_size = model.timestamp_embedding_size = int(model.embed_dim)
    return model


def _embed(audio, model: PretrainedEncoder):
    audio = as_float_wave(audio)                                # numpy / torch; integer PCM scaled to [-1, 1]
    if audio.dim() != 2:
        raise ConfigError(f"audio of shape {tuple(audio.shape)}: HEAR passes [n_sounds, n_samples]")
    return model.embed(audio, model.sample_rate, layer=getattr(model, "hear_layer", -1),
                       hop=getattr(model, "hear_hop", None))


def get_scene_embeddings(audio: Tensor, model: PretrainedEncoder) -> Tensor:
    return _embed(audio, model).clip.float()                                   # [n, D]


def get_timestamp_embeddings(audio: Tensor, model: PretrainedEncoder) -> tuple[Tensor, Tensor]:
    e = _embed(audio, model)
    emb = e.frames.float()                                                     # [n, T, D]
    ts = (e.timestamps * 1000.0).float().to(emb.device)                      # [T] ms (exact: 87.5 + 160 t)
    return emb, ts[None].expand(emb.shape[0], -1).contiguous()                # [n, T]
