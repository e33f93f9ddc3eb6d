"""Tokenizers: GPT-2 fast BPE == the pure-Python GPT-2 algorithm, HF tokenizer.json through the C++ encoder == HF
tokenizers (Qwen2-, Llama-3- and GPT-2-style files; special tokens as text or matched), the embedded demo BPE, Null."""

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


def test_gpt2_files_with_other_ids_and_wrong_files(tmp_path, gpt2_files, monkeypatch):
    enc = json.load(open(gpt2_files[0], encoding="utf-8"))
    a, b = "Ġthe", "Ġa"  # swap two merged tokens' ids: rank order no longer equals merge order
    enc[a], enc[b] = enc[b], enc[a]
    other = tmp_path / "encoder.json"
    other.write_text(json.dumps(enc), encoding="utf-8")
    # The C++ encoder looks ids up in the file, as the reference does: the same ids.
    fast = build_tokenizer("GPT2BPETokenizer", vocab_file=str(other), merge_file=gpt2_files[1])
    ref = build_tokenizer("GPT2BPETokenizer", vocab_file=str(other), merge_file=gpt2_files[1], reference=True)
    text = "the cat and a dog, the end"
    assert fast.encode(text) == ref.encode(text) != build_tokenizer(
        "GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1]).encode(text)
    monkeypatch.setitem(sys.modules, "omni_mega._bpe", None)  # tiktoken's ranks need GPT-2's id order
    with pytest.raises(ValueError, match="not GPT-2-style"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(other), merge_file=gpt2_files[1])
    with pytest.raises(ValueError, match="vocab_file must be an existing file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "nope"), merge_file=gpt2_files[1])
    # Swapped files: one line naming the file and what it should hold.
    with pytest.raises(ValueError, match=r"--vocab-file .*vocab.bpe: not a JSON object of token -> id .*swapped"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[1], merge_file=gpt2_files[0])
    with pytest.raises(ValueError, match=r"--merge-file .*encoder.json: not a '#version' line.*swapped"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[0])


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


def test_gpt2_without_tiktoken_or_the_extension(gpt2_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` now raises ImportError
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    assert tok.fast_backend.startswith("C++")  # tiktoken is only the fallback when the extension is missing
    monkeypatch.setitem(sys.modules, "omni_mega._bpe", None)
    with pytest.warns(UserWarning, match="tiktoken is not installed"):
        tok = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    assert tok.encode("Hello world") == [15496, 995] and not hasattr(tok, "encode_u32")


QWEN_LIKE = dict(pattern="qwen2", nfc=True, ignore_merges=False, bos=False)
LLAMA_LIKE = dict(pattern="cl100k", nfc=False, ignore_merges=True, bos=True)
GPT2_JSON = dict(pattern="gpt2", nfc=False, ignore_merges=False, bos=False)


def train_byte_level_bpe(path, pattern, nfc, ignore_merges, bos, vocab_size=1500):
    """A small byte-level BPE tokenizer.json shaped like Qwen2 (NFC, Qwen2's split regex), Llama-3 (cl100k regex,
    ignore_merges, a BOS template) or GPT-2 (ByteLevel's own regex), trained on the demo corpus plus some
    non-English text, with special tokens and a non-special added token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from omni_mega.data.text.bpe import CL100K_PATTERN, QWEN2_PATTERN

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if pattern == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        regex = QWEN2_PATTERN if pattern == "qwen2" else CL100K_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|begin_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    extra = ["日本語のテキストです。", "Ünïcödé naïve café", "emoji 🙂🚀", "Привет мир", "١٢٣ ٤٥", "한국어"] * 20
    tok.train_from_iterator(demo_documents(0)[:40] + extra, trainer=trainer)
    tok.add_tokens(["<nonspecial>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", 2)])
    tok.save(str(path))
    return str(path)


def hf_random_text(rng, n):
    pools = [" ", "  ", "\t", "\n", "\r\n", "abc", "The", "'s", "'LL", "'ſ", "1", "12345", ".", ",!?", "é", "e\u0301",
             "日本", "\u3000", "🙂", "\U0001FAE8", "\U000323B0", "<|endoftext|>", "<|im_start|>", "<nonspecial>",
             "\x00", "\u1100\u1161", "\uF900", "ﬅ"]
    return "".join(rng.choice(pools) for _ in range(n))


@pytest.mark.parametrize("shape", [QWEN_LIKE, LLAMA_LIKE, GPT2_JSON], ids=["qwen2", "llama3", "gpt2"])
@pytest.mark.parametrize("as_text", [True, False])
def test_huggingface_fast_path_equals_hf_tokenizers(tmp_path, shape, as_text):
    """encode_flat (the C++ encoder, with texts holding a matched added token or needing NFC done by HF) against
    HF tokenizers' own encode, special tokens ordinary text (encode_special_tokens) or matched."""
    from tokenizers import Tokenizer

    from omni_mega.data.text.tokenizer import HuggingFaceTokenizer, check_fast_path

    path = train_byte_level_bpe(tmp_path / "tokenizer.json", **shape)
    tok = HuggingFaceTokenizer(path, special_tokens_as_text=as_text)
    assert tok.fast_backend.startswith("C++ byte-level BPE")
    hf = Tokenizer.from_file(path)
    hf.encode_special_tokens = as_text
    rng = random.Random()
    texts = TRICKY + ["", "<|endoftext|>", "a<|endoftext|>b<nonspecial>c"] + demo_documents(0)[:5]
    texts += [hf_random_text(rng, rng.randint(0, 40)) for _ in range(300)]
    ids, lens = tok.encode_flat(texts)
    ends = np.cumsum(lens)
    for i, text in enumerate(texts):
        assert ids[ends[i] - lens[i]:ends[i]].tolist() == hf.encode(text).ids, repr(text)
    assert check_fast_path(tok, texts) is None
    special = tok.encode_flat(["<|endoftext|>"])[0].tolist()
    assert (special == [2] * shape["bos"] + [0]) != as_text  # the special token itself only when matched
    assert pickle.loads(pickle.dumps(tok)).special_tokens_as_text == as_text


def test_huggingface_unsupported_files_use_hf_one_text_at_a_time(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from omni_mega.data.text.tokenizer import HuggingFaceTokenizer

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2, "<|endoftext|>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "wl.json"))
    wl = HuggingFaceTokenizer(str(tmp_path / "wl.json"))
    assert wl.fast_backend.startswith("HF tokenizers, one text at a time (model WordLevel")
    ids, lens = wl.encode_flat(["a b", "b x"])
    assert ids.tolist() == [0, 1, 1, 2] and lens.tolist() == [2, 2]
    # A byte-level file with an unknown split regex (o200k's) falls back the same way, with the reason.
    path = train_byte_level_bpe(tmp_path / "t.json", **QWEN_LIKE)
    data = json.load(open(path))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{Lu}+|\s+|[^\s]+"
    json.dump(data, open(tmp_path / "o.json", "w"))
    other = HuggingFaceTokenizer(str(tmp_path / "o.json"))
    assert "pre-tokenizer regex" in other.fast_backend
    assert other.encode_flat(["Hello World"])[0].tolist() == other.encode("Hello World")


def test_check_fast_path_reports_a_disagreement(gpt2_files, monkeypatch):
    from omni_mega.data.text.tokenizer import check_fast_path

    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    assert check_fast_path(tok, TRICKY) is None
    real = tok.encode_flat
    monkeypatch.setattr(tok, "encode_flat", lambda texts, threads=1: (real(texts)[0] + 1, real(texts)[1]))
    problem = check_fast_path(tok, ["x", "Hello world"])
    assert problem.startswith("the fast tokenizer (C++ byte-level BPE (GPT-2 pattern, Unicode 17.0)) disagrees "
                              "with the reference on 2 of 2 sample texts")
