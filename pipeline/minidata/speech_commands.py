"""Mini Speech Commands (v0.01, v0.02) and SUPERB's separate v0.01 test set, in the real layouts.

ROOT/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav   1 s, 16 kHz, mono, int16
                          /_background_noise_/*.wav          long noise recordings
                          /validation_list.txt, testing_list.txt   lines `word/file.wav`
ROOT/speech_commands_test_set_v0.01/{yes,...,go,_unknown_,_silence_}/*.wav
Speakers are synthetic espeak-ng voices (8 hex chars each); the splits are speaker-disjoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.minidata.dsp import fade, limit, resample, rng_for, speed, trim_silence, write_wav
from pipeline.minidata.sources import noise
from pipeline.minidata.speech import ESPEAK_SR, Utterance, Voice, random_voice, synthesize

SR = 16000
CORE_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS_V1 = CORE_WORDS + ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                         "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
WORDS_V2 = WORDS_V1 + ("backward", "forward", "follow", "learn", "visual")
BACKGROUND = ("white_noise", "pink_noise", "running_tap", "doing_the_dishes")
_NOISE_KIND = {"white_noise": "white", "pink_noise": "pink", "running_tap": "running_tap", "doing_the_dishes": "dishes"}


def _speakers(rng: np.random.Generator, n: int, taken: set[str]) -> list[tuple[str, Voice]]:
    out = []
    while len(out) < n:
        sid = f"{int(rng.integers(0, 2**32)):08x}"
        if sid not in taken:
            taken.add(sid)
            out.append((sid, random_voice(rng)))
    return out


def _word_clip(rng: np.random.Generator, wave22k: np.ndarray, noise_bank: list[np.ndarray]) -> np.ndarray:
    """A spoken word (22.05 kHz) -> float32 [16000]: trimmed, centred in 1 s (jittered), noisy."""
    x = trim_silence(resample(wave22k, ESPEAK_SR, SR))
    if len(x) > int(0.95 * SR):  # too slow: squeeze (pitch rises a little, like a fast talker)
        x = speed(x, int(np.ceil(20 * len(x) / (0.95 * SR))))[: int(0.95 * SR)]
    clip = np.zeros(SR, np.float32)
    slack = SR - len(x)                                # centred like most real recordings, +-60 ms jitter
    offset = int(np.clip(slack // 2 + rng.integers(-int(0.06 * SR), int(0.06 * SR) + 1), 0, slack))
    clip[offset: offset + len(x)] = fade(x, SR, 0.005)
    clip = clip / (np.sqrt(np.mean(clip ** 2)) + 1e-9)
    bank = noise_bank[int(rng.integers(len(noise_bank)))]
    start = int(rng.integers(0, len(bank) - SR))
    snr_db = float(rng.uniform(15, 40))
    clip = clip + bank[start: start + SR] * 10 ** (-snr_db / 20)
    return limit(clip, target_rms=float(rng.uniform(0.03, 0.15)))


def _noise_bank(seed: int, tag: str, seconds: float) -> dict[str, np.ndarray]:
    return {name: noise(rng_for(seed, tag, "background", name), _NOISE_KIND[name], seconds, SR) for name in BACKGROUND}


def _write_background(folder: Path, bank: dict[str, np.ndarray], seed: int) -> None:
    for name, x in bank.items():
        write_wav(folder / f"{name}.wav", limit(x, float(rng_for(seed, "bg-level", name).uniform(0.05, 0.2))), SR)


def _utterances(seed: int, tag: str, speakers, words) -> list[tuple[str, str, int, Utterance]]:
    """Every speaker says every word once; some say a word twice (take n=1) a little differently."""
    jobs = []
    for sid, voice in speakers:
        for word in words:
            rng = rng_for(seed, tag, sid, word)
            takes = 2 if rng.random() < 0.15 else 1
            for n in range(takes):
                u = Utterance(word, voice, seed=int(rng.integers(2**31)),
                              rate_delta=int(rng.integers(-20, 21)), pitch_delta=int(rng.integers(-8, 9)))
                jobs.append((word, sid, n, u))
    return jobs


def write_speech_commands(out: Path, words: tuple[str, ...], seed: int, scale: float, workers: int) -> dict:
    """One Speech Commands release (v0.01: WORDS_V1, v0.02: WORDS_V2) into `out`. Returns counts."""
    tag = f"spc{len(words)}"
    n_speakers = max(4, round(16 * scale))          # 12 train, 2 valid, 2 test at scale 1
    speakers = _speakers(rng_for(seed, tag, "speakers"), n_speakers, set())
    order = rng_for(seed, tag, "split").permutation(n_speakers)
    n_hold = max(1, round(0.125 * n_speakers))
    split_of = {speakers[i][0]: ("valid" if k < n_hold else "test" if k < 2 * n_hold else "train")
                for k, i in enumerate(order)}
    bank = _noise_bank(seed, tag, seconds=max(5.0, 30.0 * min(scale, 1.0)))
    _write_background(out / "_background_noise_", bank, seed)
    jobs = _utterances(seed, tag, speakers, words)
    waves = synthesize([u for *_, u in jobs], workers=workers)
    lists = {"valid": [], "test": []}
    for (word, sid, n, _), wave in zip(jobs, waves):
        rel = f"{word}/{sid}_nohash_{n}.wav"
        write_wav(out / rel, _word_clip(rng_for(seed, tag, "clip", rel), wave, list(bank.values())), SR)
        if split_of[sid] in lists:
            lists[split_of[sid]].append(rel)
    (out / "validation_list.txt").write_text("".join(f"{r}\n" for r in sorted(lists["valid"])))
    (out / "testing_list.txt").write_text("".join(f"{r}\n" for r in sorted(lists["test"])))
    return {"clips": len(jobs), "speakers": n_speakers, "valid": len(lists["valid"]), "test": len(lists["test"])}


def write_test_set_v1(out: Path, seed: int, scale: float, workers: int, exclude_speakers: set[str]) -> dict:
    """SUPERB's v0.01 test set: the 10 core words, `_unknown_` (other v0.01 words), `_silence_` (noise cuts).
    Its speakers differ from the training speakers (`exclude_speakers`)."""
    tag = "spc1-test"
    speakers = _speakers(rng_for(seed, tag, "speakers"), max(2, round(4 * scale)), set(exclude_speakers))
    others = [w for w in WORDS_V1 if w not in CORE_WORDS]
    jobs, unknown_n = [], {}
    for sid, voice in speakers:
        rng = rng_for(seed, tag, sid)
        extra = [str(w) for w in rng.choice(others, size=3, replace=False)]
        for word in CORE_WORDS + tuple(extra):
            folder = word if word in CORE_WORDS else "_unknown_"
            n = 0
            if folder == "_unknown_":  # one speaker's several unknown words: takes 0, 1, 2 in one folder
                n = unknown_n[sid] = unknown_n.get(sid, -1) + 1
            u = Utterance(word, voice, seed=int(rng.integers(2**31)), rate_delta=int(rng.integers(-20, 21)))
            jobs.append((folder, f"{sid}_nohash_{n}.wav", u))
    bank = _noise_bank(seed, tag, seconds=10.0)
    waves = synthesize([u for *_, u in jobs], workers=workers)
    for folder, name, wave in zip([j[0] for j in jobs], [j[1] for j in jobs], waves):
        write_wav(out / folder / name, _word_clip(rng_for(seed, tag, "clip", folder, name), wave, list(bank.values())), SR)
    n_silence = len(speakers)
    for k in range(n_silence):
        rng = rng_for(seed, tag, "silence", k)
        name = BACKGROUND[k % len(BACKGROUND)]
        start = int(rng.integers(0, len(bank[name]) - SR))
        cut = limit(bank[name][start: start + SR], target_rms=float(rng.uniform(0.001, 0.05)))
        write_wav(out / "_silence_" / f"{name}_{k}.wav", cut, SR)
    return {"clips": len(jobs) + n_silence, "speakers": len(speakers), "silence": n_silence}


def speakers_of(folder: Path) -> set[str]:
    """Speaker ids used in a written Speech Commands tree (to keep the test set's speakers apart)."""
    return {p.name.split("_nohash_")[0] for p in folder.glob("*/*_nohash_*.wav")}
