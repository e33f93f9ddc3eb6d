"""Encoded clips -> the log-mel features the audio encoder and the codec read: decode (soundfile), mix down to mono,
resample to 16 kHz (`decode`), then one batched `ops.log_mel` over the clips."""

from __future__ import annotations

import numpy as np
import torch

from omni_mega.data.audio.decode import TARGET_RATE, decode, resampled_length
from omni_mega.ops.log_mel import HOP, log_mel


def mel_frames(sample_rate: int, num_samples: int) -> int:
    """Log-mel frames of a clip from its index entry (what decoding + resampling + log_mel will give)."""
    return resampled_length(num_samples, sample_rate, TARGET_RATE) // HOP


def clip_features(blobs: list[bytes], n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 [F, n_mels] log-mel frames of the clips back to back, int32 [N + 1] frame bounds)."""
    waves = [decode(b)[0] for b in blobs]
    cu = torch.tensor(np.concatenate([[0], np.cumsum([len(w) for w in waves])]), dtype=torch.int64)
    feats, cu_frames = log_mel(torch.from_numpy(np.concatenate(waves)) if waves else torch.zeros(0), cu,
                               n_mels=n_mels)
    return feats, cu_frames
