"""The C++ byte-level BPE (csrc/bpe/, omni_mega._bpe): ids identical to the references (the pure-Python GPT-2
algorithm for GPT-2's files, HF `tokenizers` for tokenizer.json files) on fresh random text over every kind of code
point, the hand-written pre-tokenizers exact against the regex engines, the Unicode tables equal to the engines',
both merge orders and both merge algorithms, the cache invisible, batches over threads identical."""

import itertools
import random

import numpy as np
import pytest

from omni_mega.data.text.bpe import (CL100K_PATTERN, GPT2_PATTERN, QWEN2_PATTERN, GPT2BPEFast, GPT2BPEReference,
                                     bytes_to_unicode)

_bpe = pytest.importorskip("omni_mega._bpe", reason="needs the compiled omni_mega._bpe extension (make build)")


@pytest.fixture(scope="module")
def bpes(gpt2_files):
    return GPT2BPEFast(*gpt2_files), GPT2BPEReference(*gpt2_files)


# Pools that exercise every branch of the pre-tokenizers: contractions (and near misses, other cases, the long s
# Oniguruma folds to s), letter/digit/symbol runs after an optional space, whitespace runs before text and at the
# end, \r\n, control characters, non-ASCII letters, digits and spaces, combining marks, emoji and ZWJ sequences,
# code points assigned after Unicode 14 (Kawi, Garay, CJK Ext. J (17.0 only), U+1FAE8), special-token strings.
POOLS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "'ſ", "'x", "''", " ", "  ", "\t", "\n",
         "\r\n", "\r", "\x0b\x0c", "abc", "Zebra", "the", "1", "2024", "12345", ".", ",!?", "-->", "\x00", "\x1c",
         "\x7f", "é", "e\u0301", "ß", "日本", "٣", "\xa0", "\u3000", "\u2028", "🙂", "👩\u200d👩\u200d👧",
         "\U00011F04", "\U00010D50", "\U000323B0", "\U0001FAE8", "<|endoftext|>", "<|im_start|>", "\uF900", "ﬅ"]


def random_text(rng: random.Random, n: int) -> str:
    if rng.random() < 0.3:  # plain random code points too (surrogates excluded), not only the pools
        return "".join(chr(c) for c in (rng.randrange(0x33500) for _ in range(n)) if not 0xD800 <= c <= 0xDFFF)
    return "".join(rng.choice(POOLS) for _ in range(n))


def split(ids, lens):
    ends = np.cumsum(lens)
    return [ids[e - n:e].tolist() for e, n in zip(ends, lens)]


def test_gpt2_matches_the_reference_on_fresh_random_text(bpes):
    fast, ref = bpes
    rng = random.Random()  # fresh inputs each run
    texts = ["", " ", "Hello world", "I'm sure they'll say it's 42,000 -- isn't it?", "a" * 300, "\n\n\n", "x  \n ",
             "日本語" * 120, "x" + "é" * 200, "<|endoftext|>"]
    texts += [random_text(rng, rng.randint(1, 60)) for _ in range(400)]
    assert fast.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    ids, lens = fast.encode_flat(texts)
    assert (lens >= 0).all() and ids.dtype == np.uint32
    for text, got in zip(texts, split(ids, lens)):
        assert got == ref.encode(text), repr(text)
    assert fast.encode("<|endoftext|>") == ref.encode("<|endoftext|>") != [fast.eod]  # ordinary text
    assert fast.decode(fast.encode(texts[3])) == texts[3]


def test_every_ascii_pair_pretokenizes_like_the_regex_module(bpes):
    """All ASCII pairs in four contexts (each character's class and every transition between classes), GPT-2's
    pattern, against the `regex` module; plus the ASCII classes themselves."""
    import regex

    fast, _ = bpes
    chars = [chr(c) for c in range(128)]
    texts = [t for a, b in itertools.product(chars, repeat=2) for t in (a + b, f"x{a}{b}y", f"{a} {b}", f"{a}{b}{b}")]
    pattern = regex.compile(GPT2_PATTERN)
    for text in texts:
        assert [p.decode() for p in fast._native.pretokenize(text)] == pattern.findall(text), repr(text)
    assert [c for c in chars if regex.match(r"\s", c)] == ["\t", "\n", "\x0b", "\x0c", "\r", " "]


def _hf_split(pattern):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


@pytest.mark.parametrize("pattern,digits", [(CL100K_PATTERN, 3), (QWEN2_PATTERN, 1), (GPT2_PATTERN, 0)])
def test_pretokenizers_match_hf_on_random_text(pattern, digits):
    """The cl100k/Llama-3, Qwen2 and GPT-2 pre-tokenizers under HF's Unicode tables against HF tokenizers' own
    Split (Oniguruma) on fresh random text."""
    kind = "gpt2" if pattern == GPT2_PATTERN else "cl100k"
    enc = _bpe.ByteLevelBPE(list(range(256)), b"", pattern=kind, max_digits=max(digits, 1), profile="hf",
                            merge_order="hf")
    split_ = _hf_split(pattern)
    rng = random.Random()
    chars = [chr(c) for c in range(128)]
    texts = [a + b + c for a, b, c in itertools.product(["'", " ", "\r", "\n", "a", "1", ".", "\t"], repeat=3)]
    texts += [f"x{a}{b}y" for a, b in itertools.product(chars, repeat=2)][::7]
    texts += [random_text(rng, rng.randint(1, 40)) for _ in range(400)]
    for text in texts:
        assert [p.decode() for p in enc.pretokenize(text)] == [p for p, _ in split_.pre_tokenize_str(text)], \
            repr(text)


def test_unicode_tables_equal_the_engines():
    """The compiled class table (csrc/bpe/unicode_classes.inc, gen_unicode_tables.py) against the installed engines
    on every code point: \\p{L}, \\p{N}, \\s under the `regex` module (GPT-2's files) and HF tokenizers
    (tokenizer.json), read through pre-tokenization. Regenerate the table after upgrading either engine."""
    import regex

    reg = _bpe.ByteLevelBPE(list(range(256)), b"", pattern="gpt2", profile="regex")
    hf = _bpe.ByteLevelBPE(list(range(256)), b"", pattern="gpt2", profile="hf")
    # In "a" + c + "a" a letter c joins the run ("aca"), a digit or other symbol splits it ("a", "c", "a"), and
    # whitespace splits it differently: the class of c decides the pieces, so comparing pieces compares classes.
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    rng = random.Random()
    sample = cps[:0x3000] + rng.sample(cps[0x3000:], 40_000)
    for engine, split_ in ((reg, regex.compile(GPT2_PATTERN).findall), (hf, None)):
        if split_ is None:
            pre = _hf_split(GPT2_PATTERN)
            split_ = lambda t: [p for p, _ in pre.pre_tokenize_str(t)]  # noqa: E731
        for c in sample:
            t = f"a{chr(c)}1{chr(c)} {chr(c)}"
            assert [p.decode() for p in engine.pretokenize(t)] == split_(t), hex(c)


def test_code_points_after_unicode_14_pinned_against_hf():
    """U+1FAE8 SHAKING FACE (Unicode 15.0, a symbol), U+11F04 KAWI LETTER A (15.0), U+10D50 GARAY (16.0) and
    U+323B0 (CJK Ext. J, Unicode 17.0: a letter for the regex module, unassigned for HF's Oniguruma)."""
    from tokenizers import pre_tokenizers

    hf_pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf = _bpe.ByteLevelBPE(list(range(256)), b"", pattern="gpt2", profile="hf")
    reg = _bpe.ByteLevelBPE(list(range(256)), b"", pattern="gpt2", profile="regex")
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for text in ("a\U0001FAE8b \U0001FAE8\U0001FAE8!", "x\U00011F04y", " \U00010D50\U00010D50 1", "a\U000323B0b"):
        expected = [bytes(byte_of[ch] for ch in p) for p, _ in hf_pre.pre_tokenize_str(text)]
        assert hf.pretokenize(text) == expected, repr(text)
    assert hf.pretokenize("a\U000323B0b") == [b"a", "\U000323B0".encode(), b"b"]  # not a letter in Unicode 16
    assert reg.pretokenize("a\U000323B0b") == ["a\U000323B0b".encode()]  # a letter in Unicode 17
    assert hf.pretokenize("a\U0001FAE8b") == reg.pretokenize("a\U0001FAE8b") == [b"a", "\U0001FAE8".encode(), b"b"]


@pytest.mark.parametrize("algorithm", [1, 2])
def test_merges_match_the_reference_on_random_words(bpes, algorithm):
    """The uncached merge loop, linear scan and heap, against the reference's on random byte strings (short and
    up to 300 bytes: the heap is the default beyond 48)."""
    fast, ref = bpes
    rng = random.Random()
    unicode_of = bytes_to_unicode()
    words = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))) for _ in range(150)]
    words += [bytes(rng.choice(b"abcdeth ") for _ in range(rng.randint(40, 300))) for _ in range(20)]
    words += [w.encode() for w in ("hello", " world", "a" * 13, " " * 8, "internationalization")]
    for word in words:
        expected = [ref.encoder[t] for t in ref.bpe("".join(unicode_of[b] for b in word))]
        assert fast._native.merge_piece(word, algorithm) == expected, word


def test_merge_orders_follow_their_references(tmp_path):
    """A merge table that ranks a pair below one of its parts' own merge (trained BPEs never do): merges
    ("ab", "a") then ("a", "b"). On "abab" GPT-2's algorithm merges both (a, b) first -> [ab, ab]; HF merges the
    leftmost (a, b), then the new (ab, a) it outranks -> [aba, b]. Each encoder follows its own reference, with
    both merge algorithms (linear scan, heap)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    unicode_of = bytes_to_unicode()
    vocab = {unicode_of[b]: b for b in range(256)} | {"ab": 256, "aba": 257, "<|endoftext|>": 258}
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nab a\na b\n")
    ref = GPT2BPEReference(str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"))
    fast = GPT2BPEFast(str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"))
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[("ab", "a"), ("a", "b")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert ref.encode("abab") == fast.encode("abab") == [256, 256]
    assert hf.encode("abab").ids == [257, 98]
    merges = np.array([[256, 97, 257], [97, 98, 256]], dtype=np.uint32).tobytes()
    gpt2 = _bpe.ByteLevelBPE(list(range(256)), merges, merge_order="gpt2")
    hf_order = _bpe.ByteLevelBPE(list(range(256)), merges, merge_order="hf")
    for algorithm in (1, 2):
        assert gpt2.merge_piece(b"abab", algorithm) == [256, 256]
        assert hf_order.merge_piece(b"abab", algorithm) == [257, 98]
        for word in (b"ababab", b"aabab", b"abababa" * 9):
            assert gpt2.merge_piece(word, algorithm) == ref.encode(word.decode())
            assert hf_order.merge_piece(word, algorithm) == hf.encode(word.decode()).ids


def test_cache_hits_and_misses_give_the_same_ids(bpes, gpt2_files):
    fast, _ = bpes
    rng = random.Random()
    texts = [random_text(rng, rng.randint(0, 80)) for _ in range(200)]
    texts += ["the cat sat on the mat; the cat sat on the mat", "internationalization " * 3] * 3
    native = fast._native
    native.use_cache = False
    uncached = fast.encode_flat(texts)
    native.use_cache = True
    native.clear_cache()
    misses0 = native.cache_misses
    cold = fast.encode_flat(texts)
    assert native.cache_misses > misses0 and native.cache_size > 0
    hits1, misses1 = native.cache_hits, native.cache_misses
    warm = fast.encode_flat(texts)
    assert native.cache_misses == misses1 and native.cache_hits > hits1  # the second pass only hits
    for got in (cold, warm):
        assert [a.tolist() for a in got] == [a.tolist() for a in uncached]
    # A cache too small for the input is cleared when full and refilled: still the same ids.
    tiny = GPT2BPEFast(*gpt2_files, cache_entries=5)
    assert [a.tolist() for a in tiny.encode_flat(texts)] == [a.tolist() for a in uncached]
    assert tiny._native.cache_size <= 5


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_threads_give_the_same_output(bpes, threads):
    fast, _ = bpes
    rng = random.Random()
    texts = [random_text(rng, rng.randint(0, 200)) for _ in range(300)] + ["lone \ud800 surrogate"]
    one = fast.encode_flat(texts, threads=1)
    many = fast.encode_flat(texts, threads=threads)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1]) and one[1][-1] == -1


def test_batch_edge_cases_and_bad_input(bpes):
    fast, ref = bpes
    ids, lens = fast.encode_flat([])
    assert ids.size == 0 and lens.size == 0
    texts = ["", "caf\u00e9", "lone \ud800 surrogate", "", "plain"]
    ids, lens = fast.encode_flat(texts)
    # A lone surrogate cannot be UTF-8: the reference rejects it; the batch marks it -1, no ids.
    with pytest.raises(Exception):
        ref.encode(texts[2])
    assert lens.tolist() == [0, len(ref.encode("café")), -1, 0, len(ref.encode("plain"))]
    assert ids.tolist() == ref.encode("café") + ref.encode("plain")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got int"):
        fast._native.encode_batch(["ok", 3])
    assert fast.encode_flat(("a tuple", " works"))[1].tolist() == [2, 1]


def test_without_the_extension_tiktoken_gives_the_same_ids(bpes, gpt2_files, monkeypatch):
    import sys

    fast, _ = bpes
    monkeypatch.setitem(sys.modules, "omni_mega._bpe", None)  # as if the extension were not built
    plain = GPT2BPEFast(*gpt2_files)
    assert plain._native is None and plain.description.startswith("tiktoken")
    rng = random.Random()
    # Letters new in Unicode 17 are the one difference (tiktoken's tables are Unicode 16): left out here.
    texts = [random_text(rng, rng.randint(0, 40)).replace("\U000323B0", "") for _ in range(50)] + ["lone \ud800"]
    got, want = plain.encode_flat(texts), fast.encode_flat(texts)
    assert [a.tolist() for a in got] == [a.tolist() for a in want] and got[1][-1] == -1


def test_jsonl_parser_agrees_with_json_loads(bpes):
    """encode_jsonl parses in C++ only lines json.loads reads the same way: on fresh random lines (valid ones with
    escapes, surrogate pairs, nested values, other keys, and mutations of them: cut, bytes flipped, lone
    surrogates, NaN, duplicate keys, lists of sentences, control characters, bad UTF-8) every line it takes gives
    the string json.loads gives, encoded; the lines it leaves are the caller's."""
    import json

    fast, _ = bpes
    rng = random.Random()
    texts = [random_text(rng, rng.randint(0, 30)) for _ in range(200)]
    lines = []
    for t in texts:
        extra = rng.choice([{}, {"id": rng.randint(-10**20, 10**20)}, {"meta": {"a": [1, 2.5e-3, None, True]}},
                            {"n": -0.0}, {"s": "x\\y"}])
        obj = {"text": t, **extra} if rng.random() < 0.5 else {**extra, "text": t}
        line = json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()
        lines.append(line)
        for _ in range(3):  # mutations
            b = bytearray(line)
            kind = rng.randrange(8)
            if kind == 0 and b:
                del b[rng.randrange(len(b)):]
            elif kind == 1 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif kind == 2:
                b = bytearray(line.replace(b"}", b', "text": "dup"}', 1))
            elif kind == 3:
                b = bytearray(line.replace(b'"text": ', b'"text": ["a", ', 1).replace(b"}", b"]}", 1))
            elif kind == 4:
                b = bytearray(b'{"text": "lone \\ud83d here", "x": NaN}')
            elif kind == 5:
                b = bytearray(b'  {"te\\u0078t" : "escaped key\\t\\u00e9\\ud83d\\ude42"}\r ')
            elif kind == 6:
                b = bytearray(b'{"text": "raw \x01 control"}')
            else:
                b = bytearray(b'{"text": "[' + b"[" * 70 + b"]" * 70 + b']", "deep": ' + b"[" * 70 + b"]" * 70 + b"}")
            lines.append(bytes(b).replace(b"\n", b" "))
    block = b"\n".join(lines) + b"\n"
    status, ((ids, lens),) = fast._native.encode_jsonl(block, ["text"])
    assert status.size == len(lines) and lens.size == int((status == 0).sum()) > len(lines) // 4
    ends = np.cumsum(lens)
    k = 0
    for line, st in zip(lines, status.tolist()):
        if st != 0:
            continue
        obj = json.loads(line.decode("utf-8"))  # C++ took it: Python must read the same string
        assert isinstance(obj, dict) and isinstance(obj["text"], str), line
        assert ids[ends[k] - lens[k]:ends[k]].tolist() == fast.encode(obj["text"]), line
        k += 1


def test_texts_without_nfc_sensitive_code_points_are_nfc_for_hf():
    """The table's NFC bit (gen_unicode_tables.py): whenever the encoder finds no NFC-sensitive code point in a text,
    HF tokenizers' NFC (the reference) leaves the text as it is. Random short texts over combining marks, jamo,
    scripts composing their vowel signs (Bengali, Tamil, Kirat Rai / Tulu-Tigalari of Unicode 16), letters, CJK,
    emoji and code points new after Unicode 14."""
    from tokenizers import normalizers

    nfc = normalizers.NFC()
    enc = _bpe.ByteLevelBPE(list(range(256)), b"", pattern="cl100k", profile="hf", merge_order="hf", nfc_check=True)
    ranges = [(0x300, 0x36F), (0x9BE, 0x9D7), (0xBBE, 0xBD7), (0x1100, 0x11FF), (0xAC00, 0xAC40), (0x16D40, 0x16D79),
              (0x11380, 0x113FF), (0x1F300, 0x1FAFF), (0x41, 0x7A), (0xC0, 0x24F), (0x4E00, 0x4E40), (0xF900, 0xF910)]
    pool = [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
    rng = random.Random()
    checked = 0
    for _ in range(30000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        if not enc.needs_nfc(text):
            assert nfc.normalize_str(text) == text, [hex(ord(c)) for c in text]
            checked += 1
    assert checked > 1000
