"""Mini AudioSet in the real layout (multi-label 10 s mixtures of 1-4 sources, real MIDs and names).

ROOT/audioset/class_labels_indices.csv                      index,mid,display_name (only the classes used)
ROOT/audioset/{balanced_train,unbalanced_train,eval}_segments.csv   3 '#' header lines, then
                                                            `YTID, start, end, "mid1,mid2"`
ROOT/audioset/audio/<split>/<YTID>.wav                      the 10 s segment (32/44.1/48 kHz, some stereo)
ROOT/audioset/manifests/<split>.json                        {"data": [{"wav": ..., "labels": "mid1,mid2"}]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.minidata.dsp import limit, pan, pink_noise, place, resample, rms, rng_for, write_wav
from pipeline.minidata.sources import animal, instrument, siren
from pipeline.minidata.speech import ESPEAK_SR, Utterance, random_voice, synthesize

SECONDS = 10.0
SPLITS = ("balanced_train", "unbalanced_train", "eval")
# (MID, display name) exactly as in AudioSet's class_labels_indices.csv / ontology
CLASSES = (("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"),
           ("/m/02zsn", "Female speech, woman speaking"), ("/m/04rlf", "Music"), ("/m/05r5c", "Piano"),
           ("/m/042v_gx", "Acoustic guitar"), ("/m/07y_7", "Violin, fiddle"), ("/m/0l14j_", "Flute"),
           ("/m/016622", "Tubular bells"), ("/m/02hnl", "Drum kit"), ("/m/0bt9lr", "Dog"), ("/m/01yrx", "Cat"),
           ("/m/01xq0k1", "Cattle, bovinae"), ("/m/03k3r", "Horse"), ("/m/068zj", "Pig"), ("/m/07bgp", "Sheep"),
           ("/m/09ddx", "Duck"), ("/m/09b5t", "Chicken, rooster"), ("/m/09ld4", "Frog"), ("/m/03kmc9", "Siren"))
MID = {name: mid for mid, name in CLASSES}
INSTRUMENTS = {"piano": "Piano", "acoustic_guitar": "Acoustic guitar", "violin": "Violin, fiddle",
               "flute": "Flute", "tubular_bells": "Tubular bells", "drum_kit": "Drum kit"}
ANIMALS = {"dog": "Dog", "cat": "Cat", "cow": "Cattle, bovinae", "horse": "Horse", "pig": "Pig",
           "sheep": "Sheep", "duck": "Duck", "rooster": "Chicken, rooster", "frog": "Frog"}
# every source kind and the labels a clip holding it gets (parents too, as AudioSet's raters did)
KIND_LABELS = {"speech_male": ("Speech", "Male speech, man speaking"),
               "speech_female": ("Speech", "Female speech, woman speaking"),
               "siren": ("Siren",),
               **{k: ("Music", name) for k, name in INSTRUMENTS.items()},
               **{k: (name,) for k, name in ANIMALS.items()}}
VOCAB = ("the", "a", "we", "you", "they", "will", "can", "see", "go", "home", "today", "after", "music", "water",
         "morning", "station", "please", "remember", "window", "garden", "yellow", "quickly", "seven", "people",
         "little", "under", "before", "minute", "weather", "question", "number", "answer", "open", "river")
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass
class Event:
    kind: str
    offset: float    # seconds into the clip
    seconds: float   # length asked of the source (speech: as long as the sentence)
    utterance: Utterance | None = None


@dataclass
class Clip:
    split: str
    ytid: str
    start: float
    sr: int
    channels: int
    events: list[Event]

    @property
    def mids(self) -> list[str]:
        names = {n for e in self.events for n in KIND_LABELS[e.kind]}
        return [mid for mid, name in CLASSES if name in names]


def _kind_for(rng: np.random.Generator, name: str) -> str:
    """A source kind that carries the class `name`."""
    kinds = [k for k, labels in KIND_LABELS.items() if name in labels]
    return str(rng.choice(kinds))


def _primaries(rng: np.random.Generator, split: str, scale: float) -> list[str]:
    """The class each clip is drawn for: balanced splits cycle the classes, unbalanced is skewed."""
    names = [name for _, name in CLASSES]
    if split == "balanced_train":
        return names * max(1, round(5 * scale))
    if split == "eval":
        return [n for i, n in enumerate(names) for _ in range(max(1, round((4 if i % 2 == 0 else 3) * scale)))]
    weights = 1.0 / (np.arange(len(names)) + 2.0)  # Speech and Music most common, as in the real set
    count = max(len(names), round(200 * scale))
    return [names[i] for i in rng.choice(len(names), size=count, p=weights / weights.sum())]


def _event(rng: np.random.Generator, kind: str, index: int) -> Event:
    seconds = float(rng.uniform(2.0, SECONDS))
    utterance = None
    if kind.startswith("speech"):
        words = rng.choice(VOCAB, size=int(rng.integers(5, 15)))
        utterance = Utterance(" ".join(words), random_voice(rng, male=kind == "speech_male"), seed=index)
    return Event(kind, offset=float(rng.uniform(0.0, SECONDS - 1.0)), seconds=seconds, utterance=utterance)


def plan(seed: int, scale: float, splits=SPLITS) -> list[Clip]:
    """Every clip of every split: ids, formats, and the sources in it (no audio yet)."""
    rng = rng_for(seed, "audioset", "plan")
    clips, seen = [], set()
    for split in splits:
        for primary in _primaries(rng, split, scale):
            ytid = "".join(rng.choice(_ID_CHARS, size=11))
            while ytid in seen:
                ytid = "".join(rng.choice(_ID_CHARS, size=11))
            seen.add(ytid)
            kinds = [_kind_for(rng, primary)]
            extra = int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))
            kinds += [str(k) for k in rng.choice(list(KIND_LABELS), size=extra)]
            events = [_event(rng, k, len(clips) * 4 + j) for j, k in enumerate(kinds)]
            clips.append(Clip(split, ytid, start=float(rng.integers(0, 60) * 10), sr=int(rng.choice(
                [32000, 44100, 48000], p=[0.5, 0.25, 0.25])), channels=2 if rng.random() < 0.2 else 1, events=events))
    return clips


def render(clip: Clip, speech: dict[int, np.ndarray], seed: int) -> np.ndarray:
    """float32 [S] or [S, 2]: the events, each at its own level (and pan), over a faint noise floor."""
    rng = rng_for(seed, "audioset", "render", clip.ytid)
    n = int(SECONDS * clip.sr)
    buf = np.zeros((n, clip.channels) if clip.channels > 1 else n, np.float32)
    for e in clip.events:
        if e.utterance is not None:
            x = resample(speech[id(e.utterance)], ESPEAK_SR, clip.sr)
        elif e.kind == "siren":
            x = siren(rng, e.seconds, clip.sr)
        elif e.kind in INSTRUMENTS:
            x = instrument(rng, e.kind, e.seconds, clip.sr)
        else:
            x = animal(rng, e.kind, e.seconds, clip.sr)
        x = x * float(10 ** (rng.uniform(-10, 0) / 20) / rms(x))  # [S_event], unit RMS * gain
        if clip.channels > 1:
            x = pan(x, float(rng.uniform(-0.8, 0.8)))  # [S_event, 2]
        place(buf, x, int(e.offset * clip.sr))
    floor = pink_noise(rng, buf.size).reshape(buf.shape)  # independent noise per channel
    buf += floor * float(10 ** (-rng.uniform(30, 45) / 20))
    return limit(buf, target_rms=float(rng.uniform(0.05, 0.15)))


def _write_tables(out: Path, clips: list[Clip], seed: int) -> None:
    with open(out / "class_labels_indices.csv", "w") as f:
        f.write("index,mid,display_name\n")
        f.writelines(f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(CLASSES))
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    for split in dict.fromkeys(c.split for c in clips):
        rows = [c for c in clips if c.split == split]
        n_labels = sum(len(c.mids) for c in rows)
        with open(out / f"{split}_segments.csv", "w") as f:
            f.write(f"# Segments csv created by supmam-clap minidata (seed {seed})\n")
            f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(CLASSES)}, "
                    f"num_positive_labels={n_labels}\n")
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            f.writelines(f'{c.ytid}, {c.start:.3f}, {c.start + SECONDS:.3f}, "{",".join(c.mids)}"\n' for c in rows)
        manifest = {"data": [{"wav": f"audio/{split}/{c.ytid}.wav", "labels": ",".join(c.mids)} for c in rows]}
        (out / "manifests" / f"{split}.json").write_text(json.dumps(manifest, indent=1) + "\n")


def write_audioset(out: Path, seed: int, scale: float, workers: int, splits=SPLITS, progress=None) -> dict:
    """Writes the mini AudioSet into `out`. Returns clip counts per split."""
    clips = plan(seed, scale, splits)
    utterances = [e.utterance for c in clips for e in c.events if e.utterance is not None]
    speech = {id(u): w for u, w in zip(utterances, synthesize(utterances, workers=workers))}
    for clip in (progress(clips) if progress else clips):
        write_wav(out / "audio" / clip.split / f"{clip.ytid}.wav", render(clip, speech, seed), clip.sr)
    _write_tables(out, clips, seed)
    return {split: sum(c.split == split for c in clips) for split in splits}
