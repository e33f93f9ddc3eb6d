#!/usr/bin/env python
"""Writes csrc/bpe/unicode_classes.inc: one byte per code point, as the reference engines classify it.

    python csrc/bpe/gen_unicode_tables.py      # after upgrading `regex` or `tokenizers`; tests/ops/test_bpe.py
                                               # compares the compiled table with the installed engines

The pre-tokenizer must see \\p{L}, \\p{N} and \\s exactly as the engine of the tokenizer it reproduces, and the engines
follow different Unicode versions: the `regex` module (GPT-2's reference, Megatron-LM's legacy GPT2BPETokenizer)
and Oniguruma inside HF `tokenizers` (tokenizer.json pre-tokenizers). So the table is read off the engines
themselves, not off a Unicode data file. Byte layout (see unicode_tables.h):
  bits 0-1: class under the `regex` module    (0 other, 1 \\p{L}, 2 \\p{N}, 3 \\s)
  bits 2-3: class under HF tokenizers (Oniguruma)
  bit 4:    may change under NFC (Python's unicodedata, and HF tokenizers' normalizers for code points it does not
            know: see nfc_sensitive)
"""

import os
import sys
import unicodedata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N = 0x110000
CLASSES = ((1, r"\p{L}"), (2, r"\p{N}"), (3, r"\s"))


def code_points() -> np.ndarray:
    return np.array([c for c in range(N) if not 0xD800 <= c <= 0xDFFF], dtype=np.int64)


def regex_classes(cps: np.ndarray) -> np.ndarray:
    import regex

    text = "".join(map(chr, cps.tolist()))
    out = np.zeros(N, dtype=np.uint8)
    for value, pattern in CLASSES:
        hits = [ord(m.group()) for m in regex.finditer(pattern, text)]
        out[hits] = value
    return out


def hf_classes(cps: np.ndarray) -> np.ndarray:
    """What HF tokenizers' Split pre-tokenizer (Oniguruma) matches: the code points it removes with behavior
    "removed" are the matches."""
    from tokenizers import Regex, pre_tokenizers

    text = "".join(map(chr, cps.tolist()))
    out = np.zeros(N, dtype=np.uint8)
    for value, pattern in CLASSES:
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
        kept = np.zeros(cps.size, dtype=bool)
        step = 1 << 16
        for i in range(0, cps.size, step):
            for _, (a, b) in split.pre_tokenize_str(text[i:i + step]):
                kept[i + a:i + b] = True
        out[cps[~kept]] = value
    return out


def nfc_sensitive() -> np.ndarray:
    """Code points whose presence means a text may not be NFC already (a text with none of them is left as it is by
    NFC): a nonzero canonical combining class, a change under NFC or NFD on its own (NFC_QC=No, or a decomposition),
    the second element of a canonical decomposition (NFC_QC=Maybe), and the Hangul jamo (composed algorithmically).
    Python's unicodedata (Unicode 14 here) answers for the code points it knows; for the others HF tokenizers' own
    normalizers (the reference; Unicode 16 for tokenizers 0.23.3) are asked: NFC/NFD of the character alone, the
    decompositions of every character, and two reordering probes for a combining class ("a" + c + U+0334 (class 1)
    and "a" + U+0316 (class 220) + c are reordered by NFD exactly when c's class is nonzero)."""
    from tokenizers import normalizers

    nfd, nfc = normalizers.NFD(), normalizers.NFC()
    out = np.zeros(N, dtype=bool)
    unknown = []
    for c in range(N):
        if 0xD800 <= c <= 0xDFFF:
            continue
        ch = chr(c)
        if unicodedata.category(ch) == "Cn":
            unknown.append(c)
            continue
        if unicodedata.combining(ch) or unicodedata.normalize("NFC", ch) != ch:
            out[c] = True
        dec = unicodedata.decomposition(ch)
        if dec and not dec.startswith("<"):
            for part in dec.split()[1:]:
                out[int(part, 16)] = True

    def hf_each(normalize, make, check):
        step = 4096  # many probes per call, separated by "\n" (a starter that composes with nothing)
        for i in range(0, len(unknown), step):
            chunk = unknown[i:i + step]
            pieces = normalize.normalize_str("\n".join(make(chr(c)) for c in chunk)).split("\n")
            assert len(pieces) == len(chunk)
            for c, piece in zip(chunk, pieces):
                check(c, piece)

    def mark_if(expected):
        def check(c, piece):
            if piece != expected(chr(c)):
                out[c] = True
        return check

    def second_elements(c, piece):
        for d in piece[1:]:
            out[ord(d)] = True

    hf_each(nfc, lambda ch: ch, mark_if(lambda ch: ch))
    hf_each(nfd, lambda ch: ch, mark_if(lambda ch: ch))
    hf_each(nfd, lambda ch: ch, second_elements)
    hf_each(nfd, lambda ch: "a" + ch + "\u0334", mark_if(lambda ch: "a" + ch + "\u0334"))
    hf_each(nfd, lambda ch: "a\u0316" + ch, mark_if(lambda ch: "a\u0316" + ch))
    for lo, hi in ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF)):
        out[lo:hi + 1] = True
    return out


def build() -> np.ndarray:
    cps = code_points()
    return regex_classes(cps) | (hf_classes(cps) << 2) | (nfc_sensitive().astype(np.uint8) << 4)


def versions() -> str:
    import regex
    import tokenizers

    return (f"regex {regex.__version__}, tokenizers {tokenizers.__version__}, "
            f"Python unicodedata {unicodedata.unidata_version}")


def main() -> None:
    table = build()
    starts = np.flatnonzero(np.diff(table.astype(np.int16), prepend=-1))
    runs = [f"{{0x{int(s):X},{int(table[s])}}}" for s in starts]
    lines = [", ".join(runs[i:i + 8]) + "," for i in range(0, len(runs), 8)]
    path = os.path.join(HERE, "unicode_classes.inc")
    with open(path + ".tmp", "w") as f:
        f.write(f"// Generated by csrc/bpe/gen_unicode_tables.py from {versions()}. Do not edit.\n")
        f.write("// {first code point, class byte} runs: the byte holds until the next run's first code point.\n")
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}: {len(runs)} runs ({versions()})", file=sys.stderr)


if __name__ == "__main__":
    main()
