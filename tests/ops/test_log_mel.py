"""ops.log_mel against transformers' WhisperFeatureExtractor (the oracle: one clip, no padding), packing
invariance, the reference backend, the inverse used for listening (Griffin-Lim), and input checks."""

import numpy as np
import pytest
import torch

from omni_mega.ops.log_mel import log_mel, log_mel_clips, mel_filters

RATE = 16000


def _clips(seed=0):
    g = np.random.default_rng(seed)
    t = np.arange(int(1.7 * RATE)) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3150 * t)).astype(np.float32)
    chirp = (0.3 * np.sin(2 * np.pi * (200 + 2000 * t[:8000]) * t[:8000])).astype(np.float32)
    return [g.standard_normal(16000).astype(np.float32) * 0.1, tone, chirp,
            g.standard_normal(201).astype(np.float32),  # the shortest clip a centred STFT takes
            (g.standard_normal(3217) * 0.01).astype(np.float32), np.zeros(4000, np.float32)]  # silence too


@pytest.mark.parametrize("n_mels", [80, 128])
def test_equals_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    clips = _clips()
    ours, cu = log_mel_clips(clips, n_mels=n_mels)
    assert cu.tolist() == [0] + np.cumsum([len(c) // 160 for c in clips]).tolist()
    for i, c in enumerate(clips):
        hf = fe(c, sampling_rate=RATE, padding="do_not_pad", return_tensors="np")["input_features"][0].T
        assert hf.shape == (len(c) // 160, n_mels)
        np.testing.assert_allclose(ours[cu[i]:cu[i + 1]].numpy(), hf, atol=1e-4, rtol=0)


def test_filters_equal_transformers_slaney():
    from transformers.audio_utils import mel_filter_bank

    for n in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=RATE, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(mel_filters(n).numpy(), ref, rtol=1e-5, atol=1e-8)


def test_packed_equals_alone_and_reference():
    clips = _clips(1)
    packed, cu = log_mel_clips(clips)
    ref, cu_ref = log_mel_clips(clips, backend="ref")
    assert torch.equal(cu, cu_ref)
    torch.testing.assert_close(packed, ref, rtol=0, atol=1e-5)
    for i, c in enumerate(clips):
        alone, _ = log_mel_clips([c])
        torch.testing.assert_close(packed[cu[i]:cu[i + 1]], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_mels", [3, 40, 256])
def test_banded_filters_equal_reference_at_any_mel_count(n_mels):
    """The batched pass applies the filters in bands of mel bins over the FFT bins they cover; with 256 mel bins
    (more than the 201 FFT bins) some triangles hold no bin at all."""
    clips = _clips(1)[:3]
    packed, _ = log_mel_clips(clips, n_mels=n_mels)
    ref, _ = log_mel_clips(clips, n_mels=n_mels, backend="ref")
    torch.testing.assert_close(packed, ref, rtol=0, atol=1e-5)


def test_input_checks():
    x = torch.zeros(1000)
    with pytest.raises(ValueError, match="clip 1 has 200 samples"):
        log_mel(x, torch.tensor([0, 800, 1000]))
    with pytest.raises(ValueError, match="must rise from 0 to 1000"):
        log_mel(x, torch.tensor([0, 999]))
    with pytest.raises(ValueError, match="1-D float"):
        log_mel(torch.zeros(2, 500), torch.tensor([0, 500]))
    feats, cu = log_mel(torch.zeros(0), torch.tensor([0]))
    assert feats.shape == (0, 80) and cu.tolist() == [0]


def test_griffin_lim_round_trip():
    from omni_mega.ops.griffin_lim import mel_to_audio

    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 600 * t)).astype(np.float32)
    mel, _ = log_mel_clips([tone])
    wave = mel_to_audio(mel, n_iter=16)
    assert wave.shape == (mel.shape[0] * 160,) and float(wave.abs().max()) <= 0.9 + 1e-6
    again, _ = log_mel_clips([wave.numpy()])
    # The tone's band comes back (its mel bin is the loudest in most frames).
    assert (again.argmax(1) == mel.argmax(1)).float().mean() > 0.9
