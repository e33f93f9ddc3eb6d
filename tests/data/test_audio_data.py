"""Audio data: tools/preprocess_audio.py (every kind of bad input counted, survivors in order, converted clips
kept and counted, safe outputs), decoding and resampling, the synthetic speech, and the audio micro-batches (CTC
stages and audio-text samples in LLM packs)."""

import io
import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import soundfile as sf
import torch

from omni_mega.data.audio.decode import AudioError, decode, resample, resampled_length
from omni_mega.data.audio.shards import AudioShardDataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "preprocess_audio.py")


def _wav(path, x, rate, fmt=None):
    sf.write(str(path), x, rate, format=fmt)


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory):
    """A JSONL mixing good clips (16 kHz mono, 8 kHz, 48 kHz stereo FLAC) with every kind of bad input."""
    d = tmp_path_factory.mktemp("audio_in")
    g = np.random.default_rng(0)
    (d / "a").mkdir()
    _wav(d / "a/good.wav", g.standard_normal(16000).astype(np.float32) * 0.1, 16000)
    _wav(d / "a/low.wav", g.standard_normal(8000).astype(np.float32) * 0.1, 8000)
    _wav(d / "a/stereo48k.flac", g.standard_normal((24000, 2)).astype(np.float32) * 0.1, 48000)
    _wav(d / "a/long.wav", g.standard_normal(16000 * 3).astype(np.float32) * 0.1, 16000)
    _wav(d / "a/zero.wav", np.zeros(0, np.float32), 16000)
    _wav(d / "a/tiny.wav", np.zeros(100, np.float32), 16000)
    (d / "a/corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    (d / "a/empty.wav").write_bytes(b"")
    rows = [("a/good.wav", "good one"), ("a/corrupt.wav", "x"), ("a/low.wav", "eight k"), ("a/zero.wav", "zero"),
            ("a/stereo48k.flac", "stereo"), ("a/long.wav", "too long"), ("a/missing.wav", "gone"),
            ("a/good.wav", "   "), ("a/tiny.wav", "tiny"), ("a/empty.wav", "empty")]
    lines = [json.dumps({"audio": a, "text": t}) for a, t in rows]
    lines.insert(3, "{not json")
    lines.append(json.dumps({"text": "no audio key"}))
    (d / "in.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_preprocess_counts_bad_input_and_keeps_converted(bad_input, tmp_path):
    from omni_mega.data.audio.preprocess import main

    out = tmp_path / "ds"
    r = main(["--input", str(bad_input / "in.jsonl"), "--output-dir", str(out), "--max-seconds", "2"])
    assert r["samples"] == 3 and r["seen"] == 12
    assert r["bad"] == {"audio corrupt": 1, "empty audio": 1, "too long": 1, "missing audio file": 1,
                        "empty text": 1, "too short": 1, "empty file": 1, "malformed JSON": 1, "missing key": 1}
    assert r["bad_first"]["too long"] == ["in.jsonl:7"] and r["bad_first"]["malformed JSON"] == ["in.jsonl:4"]
    assert r["converted"] == {"stereo": 1} and r["resampled_from"] == {"8000": 1, "48000": 1}
    ds = AudioShardDataset(out)
    assert [ds.text(i) for i in range(len(ds))] == ["good one", "eight k", "stereo"]  # input order
    assert [ds.meta(i) for i in range(3)] == [(16000, 16000, 8), (8000, 8000, 7), (48000, 24000, 6)]
    assert ds.durations.tolist() == [1.0, 1.0, 0.5] and ds.info["converted"] == {"stereo": 1}
    assert ds.info["bad_input"]["counts"]["too long"] == 1
    x, info = decode(ds[2].audio)  # the FLAC as given: stereo 48 kHz -> mono 16 kHz at load
    assert info.channels == 2 and info.sample_rate == 48000 and x.shape == (8000,) and x.dtype == np.float32
    assert ds[2].audio == (bad_input / "a/stereo48k.flac").read_bytes()  # bytes as given
    assert decode(ds[1].audio)[0].shape == (resampled_length(8000, 8000),) == (16000,)


def test_folder_mode_and_missing_transcripts(tmp_path):
    from omni_mega.data.audio.preprocess import main

    src = tmp_path / "wavs"
    (src / "sub").mkdir(parents=True)
    g = np.random.default_rng(1)
    for name in ("b.wav", "a.flac", "sub/c.wav", "notext.wav"):
        _wav(src / name, g.standard_normal(4000).astype(np.float32) * 0.1, 16000)
        if name != "notext.wav":
            (src / name).with_suffix(".txt").write_text(f"clip {name}\n")
    r = main(["--input", str(src), "--output-dir", str(tmp_path / "ds")])
    ds = AudioShardDataset(tmp_path / "ds")
    assert [ds.text(i) for i in range(len(ds))] == ["clip a.flac", "clip b.wav", "clip sub/c.wav"]
    assert r["bad"] == {"missing transcript file": 1}


def test_nothing_kept_leaves_the_old_dataset_and_errors_are_one_line(bad_input, tmp_path):
    out = tmp_path / "ds"
    ok = _run("--input", str(bad_input / "in.jsonl"), "--output-dir", str(out))
    assert ok.returncode == 0, ok.stderr
    before = (out / "dataset.json").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": str(bad_input / "a/corrupt.wav"), "text": "x"}) + "\n")
    p = _run("--input", str(bad), "--output-dir", str(out))
    assert p.returncode == 1 and "no samples to write" in p.stderr and "existing dataset is untouched" in p.stderr
    assert (out / "dataset.json").read_text() == before
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "x.txt").write_text("not a dataset")
    p = _run("--input", str(bad_input / "in.jsonl"), "--output-dir", str(tmp_path / "ro"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not part of a dataset" in p.stderr
    p = _run("--input", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "o"))
    assert p.returncode == 2 and "no such JSONL" in p.stderr


def test_resample_tones_and_antialiasing():
    for rate in (8000, 22050, 44100, 48000):
        t = np.arange(rate) / rate
        y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate)
        assert y.shape == (16000,)
        ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
        assert np.abs(y[1000:-1000] - ref[1000:-1000]).max() < 5e-3, rate
        if rate > 16000:  # a 10 kHz tone is above the new Nyquist: filtered out, not folded to 6 kHz
            alias = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32), rate)
            assert np.sqrt(np.mean(alias[1000:-1000] ** 2)) < 1e-3
    with pytest.raises(AudioError, match="audio corrupt"):
        decode(b"RIFF" + bytes(60))


def test_synthetic_speech_is_deterministic_wav():
    from omni_mega.data.demo import speech

    a, text, n = speech.make_sample("train", 5)
    b, text2, _ = speech.make_sample("train", 5)
    assert a == b and text == text2 and set(text) <= set(speech.ALPHABET + " ")
    with wave.open(io.BytesIO(a)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, n)
    assert speech.make_sample("heldout", 5)[0] != a
    assert len(speech.words()) == 48


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    from omni_mega.data.demo.speech import build_demo_speech

    return build_demo_speech(tmp_path_factory.mktemp("speech"), num_train=40, num_heldout=4)


def _plan(objective, seq, mix, gbs=2, extra=""):
    from omni_mega.config import load_config
    from omni_mega.config.plan import plan_stages

    cfg = load_config(None, [
        "model.llm={num_layers: 1, hidden_size: 32, num_attention_heads: 4}",
        "model.audio={num_layers: 1, hidden_size: 32, num_attention_heads: 2, pool: 4}",
        "model.codec={frame_stack: 8}", "model.talker={num_layers: 1, hidden_size: 32, num_attention_heads: 2}",
        f"data={{seq_length: {seq}, micro_batch_size: 1, global_batch_size: {gbs}, pack_window: 8}}",
        f"stages=[{{name: s, objective: {objective}, steps: 4, data: {mix}, trainable: [llm]{extra}}}]"])
    return cfg, plan_stages(cfg)[0]


def test_ctc_and_talker_batches(speech_dir):
    from omni_mega.config.stage import DatasetConfig
    from omni_mega.data.audio.features import mel_frames
    from omni_mega.data.source import StepSlice, build_source
    from omni_mega.data.task_source import TaskSource

    mix = f"[{{name: sp, source: audio_shards, path: '{speech_dir['train']}'}}]"
    cfg, plan = _plan("ctc", 512, mix)
    src = build_source(plan, cfg.model, "/nonexistent", 0)
    assert isinstance(src, TaskSource)
    sl = StepSlice(0, 1, 2, 1, 512)
    plan_step = src.plan_step(sl)
    mbs = src.materialize(plan_step)
    ds = AudioShardDataset(speech_dir["train"])
    for micro, mb in zip(plan_step, mbs):
        samples = [s for pack in micro for s in pack]
        frames = [mel_frames(*ds.meta(s.index)[:2]) for s in samples]
        assert mb["audio_cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(frames)]).tolist()
        assert [s.positions for s in samples] == [(f + 1) // 2 for f in frames]  # encoder frames
        assert mb["target_lengths"].tolist() == [len(ds[s.index].tokens) for s in samples]
        assert mb["audio_features"].shape == (sum(frames), 80) and mb["stats"]["capacity"] == 512
    del DatasetConfig
    cfg, plan = _plan("talker", 256, mix)
    mb = build_source(plan, cfg.model, "/nonexistent", 0).materialize(src.plan_step(StepSlice(0, 1, 2, 1, 512)))[0]
    assert "text" in mb and mb["text_cu_seqlens"][-1] == mb["text"].numel()


def test_audio_text_samples_in_llm_packs(speech_dir):
    from omni_mega.data.audio.features import mel_frames
    from omni_mega.data.source import StepSlice, build_source

    mix = (f"[{{name: t, source: demo_text, seed: 1}}, {{name: sp, source: audio_shards, path: "
           f"'{speech_dir['train']}'}}]")
    cfg, plan = _plan("lm", 128, mix, extra=", multimodal_ratio: 0.7")
    src = build_source(plan, cfg.model, "/nonexistent", 0)
    sl = StepSlice(0, 1, 2, 1, 128)
    steps = [src.plan_step(sl, ahead=k) for k in range(3)]
    ds = AudioShardDataset(speech_dir["train"])
    a = cfg.model.audio
    seen = 0
    for step in steps:
        for micro, mb in zip(step, src.materialize(step)):
            clips = [s for pack in micro for s in pack if s.kind == "audio"]
            placeholders = mb["tokens"] == a.audio_token_id
            want = sum(a.llm_tokens(mel_frames(*ds.meta(s.index)[:2])) for s in clips)
            assert int(placeholders.sum()) == want
            assert float(mb["loss_mask"][placeholders].sum()) == 0.0  # never predicted from nor predicted
            if clips:
                seen += len(clips)
                assert mb["audio_cu_seqlens"].numel() == len(clips) + 1
    assert seen > 0
    # The packed source's state resumes the same packs in a new process (here: a new source).
    src.advance(2)
    state = src.state_dict()
    again = build_source(plan, cfg.model, "/nonexistent", 2)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.plan_step(sl) == src.plan_step(sl)
    a1, b1 = src.materialize(src.plan_step(sl))[0], again.materialize(again.plan_step(sl))[0]
    assert torch.equal(a1["tokens"], b1["tokens"])
    if "audio_features" in a1:
        assert torch.equal(a1["audio_features"], b1["audio_features"])
