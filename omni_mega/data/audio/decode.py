"""Audio bytes -> mono float32 at 16 kHz: decoding (soundfile: WAV, FLAC and what libsndfile reads), the channel
mix-down and a windowed-sinc resampler (NumPy, no other dependency).

Every function here is pure and deterministic (the same bytes give the same samples), so the data path decodes in
background threads and a resumed run reads the same features.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TARGET_RATE = 16000
# Resampler: Kaiser-windowed sinc with this many zero crossings of the lower rate's filter on each side; the window's
# beta sets the stop-band (8.6: about -90 dB side lobes, librosa's "kaiser_best" uses 14.8 with 64 crossings).
ZERO_CROSSINGS, KAISER_BETA, ROLLOFF = 16, 8.6, 0.945


class AudioError(ValueError):
    """Audio the decoder cannot use; `reason` is the short counted reason ("audio corrupt", "empty audio", ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_samples: int  # per channel, at sample_rate
    channels: int
    format: str  # soundfile's format name: WAV, FLAC, ...

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def _soundfile():
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("audio decoding needs soundfile (pip install soundfile==0.14.0): " + str(e)) from None
    return soundfile


def probe(data: bytes) -> AudioInfo:
    """Header facts of encoded audio without decoding the samples; AudioError when libsndfile cannot read it."""
    sf = _soundfile()
    if not data:
        raise AudioError("empty file")
    try:
        info = sf.info(io.BytesIO(data))
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as e:
        raise AudioError("audio corrupt", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels), str(info.format))


def decode(data: bytes, target_rate: int = TARGET_RATE) -> tuple[np.ndarray, AudioInfo]:
    """(float32 mono samples at `target_rate`, the source's AudioInfo). Channels are averaged; the rate converted
    with `resample`. Raises AudioError ("audio corrupt", "empty audio")."""
    sf = _soundfile()
    info = probe(data)
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as e:
        raise AudioError("audio corrupt", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if x.shape[0] == 0:
        raise AudioError("empty audio")
    if not np.isfinite(x).all():
        raise AudioError("audio corrupt", "non-finite samples")
    mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
    return resample(mono, int(rate), target_rate), info


def resampled_length(num_samples: int, rate: int, target_rate: int = TARGET_RATE) -> int:
    """Samples `resample` returns for `num_samples` at `rate`: ceil(num_samples * target / rate)."""
    return -(-int(num_samples) * int(target_rate) // int(rate))


@lru_cache(maxsize=16)
def _phases(up: int, down: int) -> tuple[np.ndarray, int]:
    """Filter taps per output phase: ([up, 2 * half] float32, half). Output m sits at input position m * down / up;
    its phase is (m * down) % up, its taps the inputs floor(m * down / up) - half + 1 .. + half."""
    cutoff = min(1.0, up / down) * ROLLOFF  # of the input's Nyquist: below the lower rate's Nyquist
    half = int(math.ceil(ZERO_CROSSINGS / cutoff))
    frac = np.arange(up, dtype=np.float64)[:, None] / up  # fractional input position of each phase
    dist = frac - np.arange(-half + 1, half + 1, dtype=np.float64)[None]  # [up, 2 half]: t - n
    window = np.kaiser(2 * half + 1, KAISER_BETA)
    # The window is evaluated at the continuous distance (linear interpolation of the sampled window).
    wpos = np.clip(dist / half, -1.0, 1.0) * half + half
    w = np.interp(wpos, np.arange(2 * half + 1), window)
    taps = cutoff * np.sinc(cutoff * dist) * w
    return taps.astype(np.float32), half


def resample(x: np.ndarray, rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """Band-limited resampling of float mono `x` from `rate` to `target_rate` (any ratio; the ratio is reduced and
    each output phase has its own Kaiser-windowed sinc filter, cut off below the lower Nyquist so downsampling does
    not alias). Output length `resampled_length`; the same rate returns a float32 copy."""
    x = np.asarray(x, dtype=np.float32)
    if rate <= 0 or target_rate <= 0:
        raise AudioError("bad sample rate", f"{rate} -> {target_rate}")
    if rate == target_rate:
        return x.copy()
    g = math.gcd(int(rate), int(target_rate))
    up, down = target_rate // g, rate // g
    taps, half = _phases(up, down)
    n_out = resampled_length(len(x), rate, target_rate)
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    k = np.arange(2 * half)
    for a in range(0, n_out, 8192):  # chunks bound the [chunk, taps] temporary
        m = np.arange(a, min(a + 8192, n_out), dtype=np.int64)
        base = m * down // up  # floor of the input position
        idx = base[:, None] + 1 + k[None]  # padded index of inputs base - half + 1 .. base + half
        out[a:a + len(m)] = np.einsum("ij,ij->i", padded[idx], taps[(m * down) % up])
    return out
