"""The C++ GPT-2 encoder (csrc/bpe/, behind GPT2BPEFast): ids identical to the pure-Python GPT-2 algorithm and to
tiktoken, the pre-tokenizer exact on every ASCII character, the cache invisible in the ids, batches == one by one."""

import itertools
import random

import numpy as np
import pytest

from omni_mega.data.text.bpe import GPT2_PATTERN, GPT2BPEFast, GPT2BPEReference, bytes_to_unicode


@pytest.fixture(scope="module")
def bpes(gpt2_files):
    fast = GPT2BPEFast(*gpt2_files)
    if fast._native is None:
        pytest.skip("needs the compiled omni_mega._bpe extension (make build)")
    return fast, GPT2BPEReference(*gpt2_files)


def tiktoken_ids(fast, text):
    return fast._enc._core_bpe.encode_ordinary(text)  # tiktoken's own encoder, never the C++ one


# Pools that exercise every branch of the pre-tokenizer: contractions (and near misses: 'S, 'x, ''), letter/digit/
# symbol runs after an optional space, whitespace runs before text and at the end, control characters, non-ASCII
# letters, digits and spaces (routed to tiktoken), emoji and ZWJ sequences.
POOLS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'x", "''", " ", "  ", "\t", "\n", "\r\n", "\x0b\x0c",
         "abc", "Zebra", "the", "1", "2024", ".", ",!?", "-->", "\x00", "\x1c", "\x7f", "é", "ß", "日本", "٣",
         "\xa0", "\u3000", "🙂", "👩‍👩‍👧"]


def random_text(rng: random.Random, n: int, ascii_only: bool = False) -> str:
    pools = [p for p in POOLS if p.isascii()] if ascii_only else POOLS
    if rng.random() < 0.3:  # plain random code points too, not only the pools
        return "".join(chr(rng.randrange(0x80 if ascii_only else 0x3000)) for _ in range(n))
    return "".join(rng.choice(pools) for _ in range(n))


def test_every_ascii_character_pretokenizes_like_the_regex(bpes):
    """All ASCII pairs in four contexts: each character's class (\\s, \\p{L}, \\p{N}, other) and every transition
    between classes, compared with tiktoken's regex engine; the ASCII classes also against the `regex` module."""
    import regex

    fast, _ = bpes
    chars = [chr(c) for c in range(128)]
    texts = [t for a, b in itertools.product(chars, repeat=2) for t in (a + b, f"x{a}{b}y", f"{a} {b}", f"{a}{b}{b}")]
    ids, lens = fast.encode_flat(texts)
    assert (lens >= 0).all()  # all ASCII: all went through the C++ encoder
    expected = [tiktoken_ids(fast, t) for t in texts]
    assert lens.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]
    # The C++ class table (csrc/bpe/gpt2_bpe.cpp) against the regex module's Unicode classes.
    space = [c for c in chars if regex.match(r"\s", c)]
    assert space == ["\t", "\n", "\x0b", "\x0c", "\r", " "]
    assert [c for c in chars if regex.match(r"\p{L}", c)] == [c for c in chars if c.isascii() and c.isalpha()]
    assert [c for c in chars if regex.match(r"\p{N}", c)] == list("0123456789")
    assert regex.findall(GPT2_PATTERN, "it's\x1c\x1c  x") == ["it", "'s", "\x1c\x1c", " ", " x"]


def test_matches_reference_and_tiktoken_on_fresh_random_text(bpes):
    fast, ref = bpes
    rng = random.Random()  # fresh inputs each run
    texts = ["", " ", "Hello world", "I'm sure they'll say it's 42,000 -- isn't it?", "a" * 300, "\n\n\n", "x  \n "]
    texts += [random_text(rng, rng.randint(1, 60), ascii_only=i % 2 == 0) for i in range(300)]
    assert fast.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    for text in texts:
        ids = fast.encode(text)
        assert ids == ref.encode(text) == tiktoken_ids(fast, text), repr(text)
        assert fast.decode(ids) == text
        assert np.frombuffer(fast.encode_u32(text), dtype=np.uint32).tolist() == ids
    flat, lens = fast.encode_flat(texts)  # one batch == one call per text, non-ASCII texts spliced in place
    assert lens.tolist() == [len(ref.encode(t)) for t in texts]
    assert flat.dtype == np.uint32 and flat.tolist() == [i for t in texts for i in fast.encode(t)]


def test_merges_match_the_reference_on_random_words(bpes):
    """The uncached merge loop alone (on ids, with incremental pair ranks) against the reference's on strings."""
    fast, ref = bpes
    rng = random.Random()
    unicode_of = bytes_to_unicode()
    words = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 24))) for _ in range(200)]
    words += [w.encode() for w in ("hello", " world", "aaaaaaaaaaaaa", "        ", "internationalization")]
    for word in words:
        expected = [ref.encoder[t] for t in ref.bpe("".join(unicode_of[b] for b in word))]
        assert fast._native.merge_piece(word) == expected, word


def test_cache_hits_and_misses_give_the_same_ids(bpes, gpt2_files):
    fast, _ = bpes
    rng = random.Random()
    texts = [random_text(rng, rng.randint(0, 80), ascii_only=True) for _ in range(200)]
    texts += ["the cat sat on the mat; the cat sat on the mat"] * 3
    native = fast._native
    native.use_cache = False
    uncached = fast.encode_flat(texts)
    native.use_cache = True
    native.clear_cache()
    hits0, misses0 = native.cache_hits, native.cache_misses
    cold = fast.encode_flat(texts)
    assert native.cache_misses > misses0 and native.cache_size > 0
    hits1, misses1 = native.cache_hits, native.cache_misses
    warm = fast.encode_flat(texts)
    assert native.cache_misses == misses1 and native.cache_hits > hits1 > hits0  # the second pass only hits
    for got in (cold, warm):
        assert [a.tolist() for a in got] == [a.tolist() for a in uncached]
    # A cache too small for the input is cleared when full and refilled: still the same ids.
    tiny = GPT2BPEFast(*gpt2_files, cache_entries=5)
    assert [a.tolist() for a in tiny.encode_flat(texts)] == [a.tolist() for a in uncached]
    assert tiny._native.cache_size <= 5


def test_batch_edge_cases_and_bad_input(bpes):
    fast, ref = bpes
    ids, lens = fast.encode_flat([])
    assert ids.size == 0 and lens.size == 0
    texts = ["", "caf\u00e9", "lone \ud800 surrogate", "", "plain"]
    ids, lens = fast.encode_flat(texts)
    # A lone surrogate cannot be UTF-8: tiktoken and the reference both reject it; the batch marks it -1, no ids.
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
    assert plain._native is None
    rng = random.Random()
    texts = [random_text(rng, rng.randint(0, 40)) for _ in range(50)] + ["lone \ud800"]
    got, want = plain.encode_flat(texts), fast.encode_flat(texts)
    assert [a.tolist() for a in got] == [a.tolist() for a in want] and got[1][-1] == -1


def test_long_pretokens_are_left_to_tiktoken(bpes):
    """Pre-tokens over 256 bytes (the C++ merge loop is quadratic in their length) send their text to tiktoken."""
    fast, ref = bpes
    rng = random.Random()
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(257))
    texts = [letters[:256], letters, "so " + "=" * 300 + " end", " " * 400 + "x", "ok " + "7" * 1000, "short"]
    _, native_lens = fast._native.encode_batch(texts)
    assert np.frombuffer(native_lens, dtype=np.int64)[[0, 5]].min() > 0
    assert (np.frombuffer(native_lens, dtype=np.int64)[1:5] == -1).all()
    ids, lens = fast.encode_flat(texts)
    expected = [ref.encode(t) for t in texts]
    assert lens.tolist() == [len(e) for e in expected] and ids.tolist() == [i for e in expected for i in e]
