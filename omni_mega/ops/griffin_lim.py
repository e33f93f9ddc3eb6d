"""From Whisper log-mel features back to a waveform: undo the normalisation, map mel energies to a power spectrum
with the filters' pseudo-inverse, then Griffin-Lim phase recovery (alternating projections between the STFT
magnitude and consistent spectrograms). Enough to hear what the codec and the Talker produce; not a vocoder.

The log-mel floor (the clip's maximum - 8) and the filters' overlap lose information, so the result is a rough
rendering; the number of iterations trades time for fewer phase artefacts.
"""

from __future__ import annotations

import torch

from omni_mega.ops.log_mel import HOP, N_FFT, SAMPLE_RATE, mel_filters


def mel_to_power(features: torch.Tensor, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Normalised log-mel frames [F, n_mels] -> a non-negative power spectrogram [n_fft / 2 + 1, F]."""
    mel_power = torch.pow(10.0, features.double() * 4.0 - 4.0)  # inverse of (log10(x) + 4) / 4
    filters = mel_filters(features.size(1), n_fft, sample_rate).double()  # [bins, n_mels]
    return (torch.linalg.pinv(filters.T) @ mel_power.T).clamp(min=0.0)


def griffin_lim(magnitude: torch.Tensor, n_iter: int = 32, n_fft: int = N_FFT, hop_length: int = HOP,
                seed: int = 0) -> torch.Tensor:
    """Waveform float32 [F * hop] whose STFT magnitude approximates `magnitude` [n_fft / 2 + 1, F]."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    frames = magnitude.size(1)
    mag = torch.cat([magnitude, magnitude[:, -1:]], dim=1)  # the dropped last frame of the centred STFT
    g = torch.Generator().manual_seed(seed)
    phase = torch.exp(2j * torch.pi * torch.rand(mag.shape, generator=g, dtype=torch.float64))
    length = frames * hop_length
    for _ in range(n_iter):
        wave = torch.istft(mag * phase, n_fft, hop_length, window=window, length=length)
        spec = torch.stft(wave, n_fft, hop_length, window=window, return_complex=True)
        phase = spec / spec.abs().clamp(min=1e-12)
    wave = torch.istft(mag * phase, n_fft, hop_length, window=window, length=length)
    return (wave / wave.abs().max().clamp(min=1e-9) * 0.9).float()


def mel_to_audio(features: torch.Tensor, n_iter: int = 32, seed: int = 0) -> torch.Tensor:
    """Normalised log-mel frames [F, n_mels] (16 kHz, hop 160) -> a waveform float32 [F * 160], peak 0.9."""
    return griffin_lim(mel_to_power(features).sqrt(), n_iter=n_iter, seed=seed)
