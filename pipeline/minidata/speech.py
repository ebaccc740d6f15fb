"""Speech from espeak-ng (the library and voice data shipped by `espeakng-loader`), through ctypes.

espeak-ng keeps state between utterances (e.g. a static pitch-flutter index in its wave
generator) that no API call resets, so the same utterance comes out slightly different the
second time in a process. To be deterministic, every batch of utterances is synthesised in a
fresh (spawned) process, in a fixed order, with espeak's random seed set before each utterance.
Batches are fixed by the caller, so the output does not depend on the number of workers.
"""
from __future__ import annotations

import ctypes
import os
import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

ESPEAK_SR = 22050
LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Hugo", "Lee",
                 "antonio", "michel", "travis", "victor")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty",
                   "belinda", "linda", "steph", "steph2")
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER enum values
_OUTPUT_SYNCHRONOUS, _CHARS_UTF8 = 2, 1


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: espeak language + variant, and prosody parameters."""
    language: str
    variant: str
    rate: int    # words per minute (espeak: 80..450)
    pitch: int   # 0..100
    prange: int  # pitch range 0..100
    male: bool

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


def random_voice(rng: np.random.Generator, male: bool | None = None) -> Voice:
    male = bool(rng.random() < 0.5) if male is None else male
    return Voice(language=str(rng.choice(LANGUAGES)),
                 variant=str(rng.choice(MALE_VARIANTS if male else FEMALE_VARIANTS)),
                 rate=int(rng.integers(130, 210)), pitch=int(rng.integers(25, 75)),
                 prange=int(rng.integers(20, 80)), male=male)


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: Voice
    seed: int
    rate_delta: int = 0  # per-utterance variation on top of the speaker's prosody
    pitch_delta: int = 0


class _Espeak:
    """The espeak-ng library in this process (synchronous mode, audio collected by a callback)."""

    def __init__(self):
        import espeakng_loader
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # keep a reference: ctypes does not
        sr = self.lib.espeak_Initialize(_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if sr != ESPEAK_SR:
            raise RuntimeError(f"espeak-ng failed to initialise from {espeakng_loader.get_data_path()} (returned {sr})")
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, u: Utterance) -> np.ndarray:
        """-> float32 [S] at 22050 Hz."""
        if self.lib.espeak_SetVoiceByName(u.voice.name.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {u.voice.name!r}")
        self.lib.espeak_SetParameter(_RATE, int(np.clip(u.voice.rate + u.rate_delta, 80, 450)), 0)
        self.lib.espeak_SetParameter(_PITCH, int(np.clip(u.voice.pitch + u.pitch_delta, 0, 100)), 0)
        self.lib.espeak_SetParameter(_RANGE, u.voice.prange, 0)
        self.lib.espeak_ng_SetRandSeed(int(u.seed) & 0x7FFFFFFF)
        self.chunks.clear()
        text = u.text.encode()
        self.lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


_LOADED_IN_PID: int | None = None  # a forked child inherits this: it tells whether its espeak is fresh


def _synth_batch(batch: list[Utterance]) -> list[np.ndarray]:
    global _LOADED_IN_PID
    if _LOADED_IN_PID is not None:
        raise RuntimeError("espeak-ng was already used in this process (or its parent before the fork); "
                           "its state would make the speech non-deterministic")
    _LOADED_IN_PID = os.getpid()
    engine = _Espeak()
    return [engine.say(u) for u in batch]


def synthesize(utterances: list[Utterance], workers: int = 2, batch_size: int = 128) -> list[np.ndarray]:
    """Speak every utterance; each fixed batch runs in its own fresh process. -> float32 [S] at 22050 Hz each.

    Children are forked where the OS can (fast: nothing to re-import; this process never loads
    espeak, so each child starts with a fresh library), spawned elsewhere."""
    batches = [utterances[i: i + batch_size] for i in range(0, len(utterances), batch_size)]
    if not batches:
        return []
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(max(1, min(workers, len(batches))), maxtasksperchild=1) as pool:  # one batch per child
        results = pool.map(_synth_batch, batches, chunksize=1)
    return [wave for batch in results for wave in batch]
