"""Built-in synthetic "speech", made from nothing but Python and NumPy, in the real audio shard format.

A fixed alphabet of 12 letters; every letter is a sound pattern a tiny model can learn to tell apart in a few CPU
minutes: the vowels are two steady formant-like tones (F1, F2), m and n a low hum with a nasal tone, s a band of
high noise, t a short broadband burst, and k, r, l tone sweeps (up, down, up). An utterance says 1-3 words of a fixed
48-word vocabulary (consonant-vowel syllables), letters 15 ms apart and words 70-110 ms apart. Per utterance a random
pitch (all frequencies x 0.88-1.12), speed (durations x 0.85-1.2), loudness and background noise (SNR 15-30 dB); per
letter a random length jitter. 16 kHz mono, 16-bit PCM WAV (Python's `wave`). The transcript is the text itself
(byte tokens, as the other built-in data). `build_demo_speech` writes a train and a held-out split (other seeds)
once under the data dir, atomically, as `build_demo_data` does for the image data.

Real speech goes through the same path: `tools/preprocess_audio.py` on any folder of WAV/FLAC files with same-stem
transcripts gives an `audio_shards` dataset.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import uuid
import wave
from pathlib import Path

import numpy as np

from omni_mega.data.multimodal.shards import BYTE_TOKENIZER
from omni_mega.data.shard_io import DATASET_JSON

VERSION = 1  # bump when the generated audio changes, so cached copies are rebuilt
RATE = 16000
NUM_TRAIN, NUM_HELDOUT = 3000, 64
SEED = 41_2026
VOWELS, CONSONANTS = "aeiou", "mnstkrl"
ALPHABET = VOWELS + CONSONANTS
FORMANTS = {"a": (800, 1300), "e": (500, 2100), "i": (320, 2800), "o": (560, 950), "u": (340, 640)}
NASALS = {"m": (250, 1100), "n": (300, 1800)}
SWEEPS = {"k": (1800, 2700), "r": (2600, 1300), "l": (500, 1400)}


@functools.cache
def words() -> tuple[str, ...]:
    """The 48-word vocabulary: 1-2 consonant-vowel syllables (a vowel may also start a word), fixed by a seed."""
    rng = np.random.default_rng(SEED)
    out: list[str] = []
    while len(out) < 48:
        n = int(rng.integers(1, 3))
        w = "".join(CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(n))
        if rng.random() < 0.2:
            w = VOWELS[rng.integers(len(VOWELS))] + w
        if w not in out:
            out.append(w)
    return tuple(out)


def _tone(freqs, dur: float, rng: np.random.Generator, amps=(1.0, 0.6)) -> np.ndarray:
    t = np.arange(int(dur * RATE)) / RATE
    vib = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)  # a little vibrato: not a pure sine
    return sum(a * np.sin(2 * np.pi * f * vib * t + rng.uniform(0, 2 * np.pi)) for f, a in zip(freqs, amps))


def _sweep(f0: float, f1: float, dur: float) -> np.ndarray:
    t = np.arange(int(dur * RATE)) / RATE
    f = f0 + (f1 - f0) * t / max(dur, 1e-6)
    return np.sin(2 * np.pi * np.cumsum(f) / RATE)


def _band_noise(lo: float, hi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def _envelope(x: np.ndarray, ramp: float = 0.01) -> np.ndarray:
    n, r = len(x), max(1, int(ramp * RATE))
    env = np.ones(n)
    env[:r] = np.linspace(0, 1, min(r, n))[: min(r, n)]
    env[-r:] = np.minimum(env[-r:], np.linspace(1, 0, r)[-min(r, n):])
    return x * env


def letter(ch: str, pitch: float, speed: float, rng: np.random.Generator) -> np.ndarray:
    """The sound of one letter (float64, peak about 1)."""
    dur = (0.12 if ch in VOWELS else 0.09) * speed * rng.uniform(0.9, 1.1)
    if ch in FORMANTS:
        x = _tone([f * pitch for f in FORMANTS[ch]], dur, rng)
    elif ch in NASALS:
        x = 0.7 * _tone([f * pitch for f in NASALS[ch]], dur, rng, amps=(1.0, 0.35))
    elif ch in SWEEPS:
        f0, f1 = SWEEPS[ch]
        x = 0.8 * _sweep(f0 * pitch, f1 * pitch, dur)
    elif ch == "s":
        x = 0.5 * _band_noise(4000 * pitch, 7000, int(dur * RATE), rng)
    elif ch == "t":
        burst = 0.9 * _band_noise(500, 7500, int(0.035 * RATE), rng)
        x = np.concatenate([burst, np.zeros(int(max(dur - 0.035, 0.02) * RATE))])
    else:
        raise ValueError(f"synthetic speech: {ch!r} is not in the alphabet {ALPHABET!r}")
    return _envelope(x / max(np.abs(x).max(), 1e-9))


def utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """float32 samples of `text` (letters of ALPHABET and spaces) at 16 kHz, peak < 1."""
    pitch, speed = rng.uniform(0.88, 1.12), rng.uniform(0.85, 1.2)
    parts = [np.zeros(int(rng.uniform(0.05, 0.15) * RATE))]
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(int(rng.uniform(0.07, 0.11) * speed * RATE)))
            continue
        parts += [letter(ch, pitch, speed, rng), np.zeros(int(0.015 * RATE))]
    parts.append(np.zeros(int(rng.uniform(0.05, 0.15) * RATE)))
    x = np.concatenate(parts) * rng.uniform(0.3, 0.8)
    signal_rms = np.sqrt(np.mean(x[np.abs(x) > 0] ** 2)) if np.any(x) else 0.1
    noise = rng.standard_normal(len(x)) * signal_rms / 10 ** (rng.uniform(15, 30) / 20)
    return np.clip(x + noise, -0.99, 0.99).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit PCM mono WAV of float samples in [-1, 1]."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buf.getvalue()


def make_sample(split: str, index: int) -> tuple[bytes, str, int]:
    """(WAV bytes, transcript, samples) of utterance `index` of `split`."""
    rng = np.random.default_rng((SEED, split == "heldout", index))
    vocab = words()
    text = " ".join(vocab[int(rng.integers(len(vocab)))] for _ in range(int(rng.integers(1, 4))))
    x = utterance(text, rng)
    return wav_bytes(x), text, len(x)


def _write_split(out_dir: Path, split: str, n: int) -> None:
    from omni_mega.data.audio.shards import AudioShardWriter

    seconds = 0.0
    with AudioShardWriter(out_dir, dict(BYTE_TOKENIZER), shard_size=1000) as writer:
        for i in range(n):
            data, text, samples = make_sample(split, i)
            seconds += samples / RATE
            writer.add(data, list(text.encode()), sample_rate=RATE, num_samples=samples, channels=1, text=text)
        writer.finish(source=f"omni_mega.data.demo.speech v{VERSION} ({split})", hours=seconds / 3600,
                      alphabet=ALPHABET, bad_input={"counts": {}, "first": {}})


def _complete(root: Path) -> bool:
    return all((root / split / DATASET_JSON).is_file() for split in ("train", "heldout"))


def build_demo_speech(data_dir: str | Path, *, num_train: int = NUM_TRAIN,
                      num_heldout: int = NUM_HELDOUT) -> dict[str, Path]:
    """Builds the synthetic speech under `data_dir` once and returns {"train": dir, "heldout": dir}
    (`AudioShardDataset` directories); later calls return the cached copy. Other sizes get their own directory."""
    name = f"demo_speech_v{VERSION}"
    if (num_train, num_heldout) != (NUM_TRAIN, NUM_HELDOUT):
        name += f"_{num_train}_{num_heldout}"
    root = Path(data_dir) / name
    paths = {"train": root / "train", "heldout": root / "heldout"}
    if _complete(root):
        return paths
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(data_dir) / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_split(tmp / "train", "train", num_train)
        _write_split(tmp / "heldout", "heldout", num_heldout)
        try:
            os.rename(tmp, root)  # atomic; fails when another process renamed its copy first
        except OSError:
            if not _complete(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
