"""`log_mel`: Whisper's log-mel spectrogram of packed variable-length clips, in one batched pass.

The definition is Whisper's (and transformers' `WhisperFeatureExtractor` run on one clip without padding): a
centred STFT (reflect padding of n_fft / 2 on both sides) with a periodic Hann window of n_fft = 400 samples and a
hop of 160 (10 ms at 16 kHz), the power spectrum of each frame but the last, Slaney-style mel filters (Slaney's mel
scale, area-normalised triangles, 0-8 kHz) with 80 or 128 bins, log10 of the mel energies clamped at 1e-10, a floor
at the clip's maximum - 8, then (x + 4) / 4. A clip of L samples gives L // hop frames.

Layout (THD, like the packed images): `waveforms` float [S] holds every clip back to back, `cu_samples` int [N + 1]
its bounds; the result is features float32 [F, n_mels] (clips back to back, F = sum L_i // hop) and `cu_frames`
int32 [N + 1]. Every clip is computed as if alone (its own reflect padding, its own maximum), so packing never
changes a clip's features.

Backends: "ref" (`log_mel_ref`: torch.stft per clip, as Whisper writes it) and "auto" (every frame of every clip as
one strided view of a flat buffer, windowed, real-FFT'd and filtered in cache-sized chunks of frames, then a segmented
maximum: plain PyTorch, on any device). No C++ kernel: the rFFT (pocketfft, which a kernel would call too) is a third
of the pass on CPU and bounds what fusing the rest could gain (benchmarks/ops/bench_log_mel.py prints the split).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from omni_mega.ops import _checks

N_FFT, HOP, SAMPLE_RATE = 400, 160, 16000
MEL_BINS = (80, 128)  # Whisper's two front ends (large-v3 uses 128)
CHUNK_FRAMES = 1024  # frames per chunk of the batched pass (see `log_mel`)
# The filter matmul in 4 bands of mel bins, each over the FFT bins it covers (a quarter of the dense work): 1,024
# frames x 80 mels, 2 threads: 0.91 ms dense, 0.59 ms in 2 bands, 0.57 ms in 4, 1.4 ms in 8 (small matmuls).
FILTER_BANDS = 4


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above
    (27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, lin)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log, lin)


@lru_cache(maxsize=8)
def _filters_np(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    bins = n_fft // 2 + 1
    fft_hz = np.linspace(0.0, sample_rate / 2, bins)
    edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(0.0), hz_to_mel_slaney(8000.0), n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rise = (fft_hz[:, None] - lo[None]) / (mid - lo)[None]
    fall = (hi[None] - fft_hz[:, None]) / (hi - mid)[None]
    tri = np.maximum(0.0, np.minimum(rise, fall))  # [bins, n_mels]
    return (tri * (2.0 / (hi - lo))[None]).astype(np.float32)  # Slaney's area normalisation


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [n_fft / 2 + 1, n_mels]: power-spectrum bins -> mel energies (Slaney scale and norm, 0-8 kHz)."""
    return torch.from_numpy(_filters_np(n_mels, n_fft, sample_rate)).to(device)


def num_frames(num_samples: int, hop_length: int = HOP) -> int:
    """Frames of a clip of `num_samples` samples (the centred STFT's last frame is dropped)."""
    return num_samples // hop_length


def _check(waveforms: torch.Tensor, cu_samples: torch.Tensor, n_mels: int, n_fft: int, hop: int) -> list[int]:
    if waveforms.dim() != 1 or not waveforms.is_floating_point():
        raise ValueError(f"log_mel: waveforms must be a 1-D float tensor (clips back to back), got "
                         f"{_checks.described(waveforms)}")
    if cu_samples.dim() != 1 or cu_samples.numel() < 1 or cu_samples.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"log_mel: cu_samples must be int [N + 1] clip bounds, got {_checks.described(cu_samples)}")
    if n_mels < 1 or n_fft < 2 or hop < 1:
        raise ValueError(f"log_mel: need n_mels >= 1, n_fft >= 2, hop_length >= 1, got {n_mels}, {n_fft}, {hop}")
    cu = cu_samples.tolist()
    if cu[0] != 0 or cu[-1] != waveforms.numel() or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"log_mel: cu_samples must rise from 0 to {waveforms.numel()} (the samples), got "
                         f"{cu[:4]}{'...' if len(cu) > 4 else ''}{cu[-1:] if len(cu) > 4 else ''}")
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    for i, n in enumerate(lengths):
        if n <= n_fft // 2:  # reflect padding of n_fft / 2 needs more samples than that
            raise ValueError(f"log_mel: clip {i} has {n} samples; a centred STFT with n_fft={n_fft} needs more than "
                             f"{n_fft // 2}")
    return lengths


def _finish(log_spec: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """Per clip: floor at its maximum - 8, then (x + 4) / 4 (x 0.25: the same float). log_spec [F, n_mels] packed,
    overwritten."""
    dev = log_spec.device
    seg = torch.repeat_interleave(torch.arange(len(frames), device=dev), torch.tensor(frames, device=dev))
    peak = torch.full((len(frames),), -math.inf, dtype=log_spec.dtype, device=dev)
    peak = peak.scatter_reduce(0, seg, log_spec.amax(dim=1), reduce="amax")
    return torch.maximum(log_spec, (peak - 8.0)[seg][:, None], out=log_spec).add_(4.0).mul_(0.25)


def _cu(frames: list[int], device) -> torch.Tensor:
    return torch.tensor([0] + list(np.cumsum(frames)), dtype=torch.int32, device=device)


def log_mel_ref(waveforms: torch.Tensor, cu_samples: torch.Tensor, *, n_mels: int = 80, n_fft: int = N_FFT,
                hop_length: int = HOP, sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference, one clip at a time, written as Whisper writes it (same contract as `log_mel`)."""
    lengths = _check(waveforms, cu_samples, n_mels, n_fft, hop_length)
    filters = mel_filters(n_mels, n_fft, sample_rate, waveforms.device)
    window = torch.hann_window(n_fft, device=waveforms.device)
    out, at = [], 0
    for n in lengths:
        clip = waveforms[at:at + n].float()
        at += n
        stft = torch.stft(clip, n_fft, hop_length, window=window, return_complex=True)  # centred, reflect
        power = stft[:, :-1].abs() ** 2  # [bins, frames]
        log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        out.append(((log_spec + 4.0) / 4.0).T)
    feats = torch.cat(out) if out else waveforms.new_zeros(0, n_mels, dtype=torch.float32)
    return feats, _cu([n // hop_length for n in lengths], waveforms.device)


@lru_cache(maxsize=8)
def _window(n_fft: int, device: str) -> torch.Tensor:
    return torch.hann_window(n_fft, device=device)


@lru_cache(maxsize=8)
def _paired_filters(n_mels: int, n_fft: int, sample_rate: int, device: str) -> torch.Tensor:
    """float32 [2 x bins, n_mels]: each row of `mel_filters` twice, for a spectrum read as (re, im) pairs."""
    return mel_filters(n_mels, n_fft, sample_rate, device).repeat_interleave(2, dim=0)


@lru_cache(maxsize=8)
def _filter_bands(n_mels: int, n_fft: int, sample_rate: int, device: str) -> tuple:
    """The paired filters cut into FILTER_BANDS runs of consecutive mel bins, each with the range of spectrum columns
    its triangles cover: ((first mel, end mel, first column, end column, filters [columns, mels]), ...). The filter
    matrix is 98% zeros (391 non-zero of 201 x 80): a mel bin covers 1-14 FFT bins."""
    paired = _paired_filters(n_mels, n_fft, sample_rate, device)
    nz = paired != 0
    rows = torch.arange(paired.size(0), device=paired.device)[:, None]
    first = torch.where(nz, rows, paired.size(0)).amin(0).tolist()
    end = (torch.where(nz, rows, -1).amax(0) + 1).tolist()
    edges = [round(i * n_mels / FILTER_BANDS) for i in range(FILTER_BANDS + 1)]
    bands = []
    for a, b in zip(edges, edges[1:]):
        if a == b:
            continue
        lo, hi = min(first[a:b]), max(end[a:b])
        lo, hi = (0, paired.size(0)) if lo >= hi else (lo, hi)  # all-zero filters (more mel bins than FFT bins)
        bands.append((a, b, lo, hi, paired[lo:hi, a:b].contiguous()))
    return tuple(bands)


def log_mel(waveforms: torch.Tensor, cu_samples: torch.Tensor, *, n_mels: int = 80, n_fft: int = N_FFT,
            hop_length: int = HOP, sample_rate: int = SAMPLE_RATE,
            backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features of packed clips.

    Args:
        waveforms: float [S], mono clips at `sample_rate` back to back (float32 is computed as is).
        cu_samples: int32/int64 [N + 1] clip bounds; every clip needs more than n_fft / 2 samples.
        n_mels: 80 or 128 for Whisper's front ends (any positive number is computed).
        backend: "auto" (batched) | "ref" (per clip, `log_mel_ref`).
    Returns:
        features: float32 [F, n_mels], F = sum(L_i // hop_length), clips back to back.
        cu_frames: int32 [N + 1] frame bounds.
    """
    if backend not in ("auto", "ref"):
        raise ValueError(f"log_mel: backend must be 'auto' or 'ref', got {backend!r}")
    if backend == "ref":
        return log_mel_ref(waveforms, cu_samples, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length,
                           sample_rate=sample_rate)
    lengths = _check(waveforms, cu_samples, n_mels, n_fft, hop_length)
    dev, half = waveforms.device, n_fft // 2
    frames = [n // hop_length for n in lengths]
    if not lengths:
        return waveforms.new_zeros(0, n_mels, dtype=torch.float32), _cu([], dev)
    x = waveforms.float()
    # One flat buffer: each clip reflect-padded by n_fft / 2 on both sides (as torch.stft's centring), placed at an
    # offset that is a multiple of the hop, so the frames of every clip are frames of the whole buffer and one
    # uncentred STFT computes them all (about three frames per clip are computed in the gaps and not used).
    slots = [-(-(n + 2 * half) // hop_length) * hop_length for n in lengths]
    pieces, at = [], 0
    for n, slot in zip(lengths, slots):
        clip = x[at:at + n]
        at += n
        pieces += [torch.nn.functional.pad(clip[None], (half, half), mode="reflect")[0],
                   x.new_zeros(slot - n - 2 * half)]
    buf = torch.cat(pieces + [x.new_zeros(n_fft)])
    frames_all = buf.unfold(0, n_fft, hop_length)  # every frame of the buffer: a view
    window = _window(n_fft, str(dev))
    bands = _filter_bands(n_mels, n_fft, sample_rate, str(dev))
    mel_all = torch.empty(frames_all.size(0), n_mels, dtype=torch.float32, device=dev)
    # In chunks of CHUNK_FRAMES so that the windowed frames, their spectrum and its square stay in cache: 64 clips of
    # 1-8 s (29k frames), 2 threads: window + rFFT + power + filters 115 ms in one pass over the whole buffer, 39 ms in
    # chunks of 1,024 frames (256: 48 ms, 4,096: 57 ms). |X|^2 @ filters is computed as (re, im interleaved)^2 @
    # (each filter row twice): the spectrum read as a contiguous real matrix, not as strided real/imaginary views.
    for start in range(0, frames_all.size(0), CHUNK_FRAMES):
        spec = torch.fft.rfft(frames_all[start:start + CHUNK_FRAMES] * window, dim=1)  # [c, bins]
        power = torch.view_as_real(spec).reshape(spec.size(0), -1).square_()
        out = mel_all[start:start + spec.size(0)]
        for a, b, lo, hi, f in bands:
            out[:, a:b] = power[:, lo:hi] @ f
    offsets = np.concatenate([[0], np.cumsum(slots)[:-1]]) // hop_length
    rows = torch.from_numpy(np.concatenate([np.arange(f) + o for o, f in zip(offsets, frames)])).to(dev)
    mel = mel_all.index_select(0, rows)  # the clips' frames only
    log_spec = mel.clamp_(min=1e-10).log10_()
    return _finish(log_spec, frames), _cu(frames, dev)


def log_mel_clips(clips: list, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """`log_mel` of a list of 1-D arrays or tensors (packed here)."""
    ts = [torch.as_tensor(np.asarray(c, dtype=np.float32)) if not torch.is_tensor(c) else c.float() for c in clips]
    cu = torch.tensor([0] + list(np.cumsum([t.numel() for t in ts])), dtype=torch.int64)
    return log_mel(torch.cat(ts) if ts else torch.zeros(0), cu, **kw)
