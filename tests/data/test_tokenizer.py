"""Tokenizers: GPT-2 fast BPE == the pure-Python GPT-2 algorithm, the embedded demo BPE, Null and HF kinds."""

import json
import os
import pickle
import random
import sys

import numpy as np
import pytest

from omni_mega.data.demo.corpus import demo_documents
from omni_mega.data.text.tokenizer import build_tokenizer, demo_tokenizer, train_demo_bpe

TRICKY = [
    "", " ", "\n", "Hello world", "Hello  world", "  leading and trailing  ", "tabs\t\tand\n\n\nnewlines \n x",
    "it's they're we've I'm you'll he'd 'S", "numbers 1234567 3.14159 -42 1e10", "ünïcödé naïve café",
    "日本語のテキスト", "emoji 🙂🚀 and ZWJ 👩‍👩‍👧", "mixed\r\nline\rendings", "   \t  ", "a" * 300, "!!!???...,,,",
]


def random_text(rng: random.Random, n: int) -> str:
    """Fresh random text over ASCII, whitespace, Latin-1, CJK and emoji code points."""
    pools = [" \t\n", " \r\x0b\x0c\x85\xa0\u3000\u2028\x1c", "abcdefghijklmnopqrstuvwxyzABCXYZ", "0123456789", ".,;:'\"!?()-", "éüßñøÆ", "中文字", "🙂🚀"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def test_gpt2_fast_matches_reference_algorithm(gpt2_files):
    fast = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    ref = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1], reference=True)
    assert (fast.vocab_size, fast.eod) == (ref.vocab_size, ref.eod) == (50257, 50256)
    assert fast.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    rng = random.Random()  # fresh inputs each run
    texts = TRICKY + demo_documents(0)[::4] + [random_text(rng, rng.randint(1, 400)) for _ in range(200)]
    for text in texts:
        ids = fast.encode(text)
        assert ids == ref.encode(text), text[:80]
        assert fast.decode(ids) == text == ref.decode(ids)
        assert np.frombuffer(fast.encode_u32(text), dtype=np.uint32).tolist() == ids  # the preprocessing path
    clone = pickle.loads(pickle.dumps(fast))
    assert clone.encode(texts[-1]) == fast.encode(texts[-1])


def test_gpt2_rejects_mismatched_files(tmp_path, gpt2_files):
    enc = json.load(open(gpt2_files[0], encoding="utf-8"))
    a, b = "Ġthe", "Ġa"  # swap two merged tokens' ids: rank order no longer equals merge order
    enc[a], enc[b] = enc[b], enc[a]
    bad = tmp_path / "encoder.json"
    bad.write_text(json.dumps(enc), encoding="utf-8")
    with pytest.raises(ValueError, match="not GPT-2-style"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(bad), merge_file=gpt2_files[1])
    with pytest.raises(ValueError, match="vocab_file must be an existing file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "nope"), merge_file=gpt2_files[1])


def test_demo_tokenizer_is_deterministic_and_roundtrips(tmp_path):
    first = train_demo_bpe(str(tmp_path / "a"), vocab_size=1024)
    second = train_demo_bpe(str(tmp_path / "b"), vocab_size=1024)
    assert open(os.path.join(first, "tokenizer.json"), "rb").read() == \
        open(os.path.join(second, "tokenizer.json"), "rb").read()
    tok = demo_tokenizer(str(tmp_path / "c"), vocab_size=1024)
    assert tok.vocab_size == 1024 and tok._tok.id_to_token(tok.eod) == "<|endoftext|>"
    rng = random.Random()
    for text in TRICKY + demo_documents(0)[:5] + [random_text(rng, 200)]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    docs = demo_documents(0)
    assert sum(len(tok.encode(d)) for d in docs) < 0.5 * sum(len(d.encode()) for d in docs)  # it learned merges
    assert pickle.loads(pickle.dumps(tok)).encode(docs[0]) == tok.encode(docs[0])


def test_huggingface_eod_from_config_and_null(tmp_path):
    src = demo_tokenizer(str(tmp_path / "t"), vocab_size=512)
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(open(os.path.join(src.tokenizer_model, "tokenizer.json"), "rb").read())
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    hf = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(d))
    assert hf.eod == src.eod and hf.unique_identifiers["class"] == "HuggingFaceTokenizer"
    with pytest.raises(ValueError, match="no end-of-document token"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(d), eod_token="<nope>")
    with pytest.raises(ValueError, match="tokenizer_model must be"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "missing"))

    null = build_tokenizer("NullTokenizer", vocab_size=1000)
    assert (null.vocab_size, null.eod) == (1001, 1000)
    assert null.encode("5 0 999") == [5, 0, 999] and null.decode([5, 0, 999]) == "5 0 999"
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        build_tokenizer("NullTokenizer", vocab_size=0)
    with pytest.raises(ValueError, match="tokenizer kind must be one of"):
        build_tokenizer("SentencePiece")


def test_gpt2_without_tiktoken_falls_back_to_the_reference(gpt2_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` now raises ImportError
    with pytest.warns(UserWarning, match="tiktoken is not installed"):
        tok = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    assert tok.encode("Hello world") == [15496, 995] and not hasattr(tok, "encode_u32")
