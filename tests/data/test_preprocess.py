"""tools/preprocess_data.py: byte identity with Megatron-LM's algorithm, readability, bad input, interrupted runs.

`megatron_reference` below is an independent, plain re-statement of Megatron-LM's `tools/preprocess_data.py`
(Encoder.encode + Partition.process_json_file + the partition merge) using megatron-core's IndexedDatasetBuilder
one document at a time and the pure-Python GPT-2 BPE. Megatron-LM itself is not installed here, so "byte-identical
to Megatron-LM" is checked against this re-statement, not against Megatron-LM's own script.
"""

import gzip
import json
import multiprocessing
import os
import random
import sys

import numpy as np
import pytest

from omni_mega.data.text import encode_blocks, preprocess
from omni_mega.data.demo.corpus import demo_documents, write_jsonl
from omni_mega.data.text.tokenizer import GPT2BPETokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def megatron_reference(files, prefix, keys, tokenizer, append_eod=True, partitions=1, level="document"):
    """Megatron-LM's preprocess_data.py algorithm, one line and one add_document at a time."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    lines = []
    for name in files:
        with (gzip.open(name, "rt", encoding="utf-8") if name.endswith(".gz") else open(name, encoding="utf-8")) as f:
            lines.extend(f)
    parts = [lines[p::partitions] for p in range(partitions)]  # round-robin deal of lines to partition files
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    part_prefixes = []
    for p, part_lines in enumerate(parts):
        part_prefix = prefix if partitions == 1 else f"{prefix}_{p}"
        part_prefixes.append(part_prefix)
        builders = {k: IndexedDatasetBuilder(f"{part_prefix}_{k}_{level}.bin", dtype=dtype) for k in keys}
        for line in part_lines:
            data = json.loads(line)
            for key in keys:
                text = data[key]
                sentences = text if isinstance(text, list) else [text]
                doc_ids, lens = [], []
                for sentence in sentences:
                    ids = tokenizer.tokenize(sentence)
                    if len(ids) > 0:
                        doc_ids.extend(ids)
                        lens.append(len(ids))
                if len(doc_ids) > 0 and append_eod:
                    doc_ids.append(tokenizer.eod)
                    lens[-1] += 1
                builders[key].add_document(doc_ids, lens)
        for key in keys:
            builders[key].finalize(f"{part_prefix}_{key}_{level}.idx")
    if partitions > 1:
        for key in keys:
            merged = IndexedDatasetBuilder(f"{prefix}_{key}_{level}.bin", dtype=dtype)
            for part_prefix in part_prefixes:
                merged.add_index(f"{part_prefix}_{key}_{level}")
            merged.finalize(f"{prefix}_{key}_{level}.idx")


def read_bytes(prefix, key, level="document"):
    return tuple(open(f"{prefix}_{key}_{level}.{ext}", "rb").read() for ext in ("bin", "idx"))


def mixed_docs(n=120):
    """Demo documents plus the cases Megatron-LM handles specially: sentence lists (with an empty sentence),
    empty text, non-ASCII text, whitespace runs."""
    docs = [{"text": d, "title": d[:40]} for d in demo_documents(600)[:n]]
    docs[3] = {"text": ["First sentence. ", "", "Second one ünïcödé 日本語 🙂"], "title": "sentences"}
    docs[7] = {"text": "", "title": "empty text"}
    docs[11] = {"text": "  tabs\t\tand   spaces\n\n\n end  ", "title": ""}
    return docs


def write_lines(path, objs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o) + "\n")


def where(summary, reason):
    return [(os.path.basename(f), n) for f, n in summary["bad_first"][reason]]


def run_cli(inp, prefix, files, *extra, workers=2):
    vocab, merges = files
    return preprocess.main(["--input", inp, "--output-prefix", prefix, "--tokenizer-type", "GPT2BPETokenizer",
                            "--vocab-file", vocab, "--merge-file", merges, "--workers", str(workers),
                            "--log-interval", "50", *extra])


@pytest.mark.parametrize("partitions", [1, 2])
def test_byte_identical_to_megatron_algorithm(tmp_path, gpt2_files, monkeypatch, partitions):
    inp = str(tmp_path / "in.jsonl")
    write_lines(inp, mixed_docs())
    ref = GPT2BPETokenizer(*gpt2_files, reference=True)
    megatron_reference([inp], str(tmp_path / "ref"), ["text", "title"], ref, partitions=partitions)
    monkeypatch.setattr(preprocess, "BLOCK_BYTES", 4096)  # many blocks, so both workers and reordering are used
    out = run_cli(inp, str(tmp_path / "ours"), gpt2_files, "--json-keys", "text", "title", "--append-eod",
                  "--partitions", str(partitions))
    for key in ("text", "title"):
        assert read_bytes(tmp_path / "ours", key) == read_bytes(tmp_path / "ref", key), key
    assert out["docs"] == 120
    assert list(out["bad"]) == ["empty document ('text', kept as Megatron-LM keeps it)",
                                "empty document ('title', kept as Megatron-LM keeps it)"]
    assert [where(out, reason) for reason in out["bad"]] == [[("in.jsonl", 8)], [("in.jsonl", 12)]]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["in.jsonl"] + [f"{p}_{k}_document.{e}" for p in ("ours", "ref") for k in ("text", "title")
                        for e in ("bin", "idx")]
        + ([f"ref_{i}_{k}_document.{e}" for i in range(2) for k in ("text", "title") for e in ("bin", "idx")]
           if partitions == 2 else []))


def test_readable_and_usable_by_megatron(tmp_path, gpt2_files):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = demo_documents(800)[:40]
    files = [write_jsonl(str(tmp_path / "a.jsonl"), docs[:25]), str(tmp_path / "b.jsonl.gz")]
    with gzip.open(files[1], "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[25:])
    run_cli(str(tmp_path / "*.jsonl*"), str(tmp_path / "out"), gpt2_files, "--append-eod", workers=1)
    tok = GPT2BPETokenizer(*gpt2_files)
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert len(ds) == 40 and ds.sequence_lengths.dtype == np.int32
    assert ds[0].dtype == np.uint16  # GPT-2's 50,257 ids fit in uint16 (Megatron's optimal_dtype)
    for i in (0, 24, 25, 39):  # both files, in sorted glob order, the .gz one decompressed
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod and tok.decode(ids[:-1]) == docs[i]


def test_bad_input_is_counted_never_shifts(tmp_path, gpt2_files):
    good = [{"text": d} for d in demo_documents(300)[:12]]
    raw = [json.dumps(good[0]).encode(), b'{"text": "unterminated', json.dumps(good[1]).encode(),
           b'{"other": "no text key"}', json.dumps(good[2]).encode(), b"\xff\xfe not utf-8 \x80",
           b"", b"[1, 2]", b'{"text": 17}', json.dumps(good[3]).encode(), json.dumps({"text": ""}).encode()]
    raw += [json.dumps(g).encode() for g in good[4:]]
    inp = tmp_path / "bad.jsonl"
    inp.write_bytes(b"\n".join(raw))  # no newline after the last line: it still counts
    out = run_cli(str(inp), str(tmp_path / "ours"), gpt2_files, "--append-eod")
    assert out["bad"] == {"malformed JSON": 3, "missing key": 1, "not UTF-8": 1,
                          "value not a string or list of strings": 1,
                          "empty document ('text', kept as Megatron-LM keeps it)": 1}
    assert where(out, "malformed JSON") == [("bad.jsonl", 2), ("bad.jsonl", 7), ("bad.jsonl", 8)]
    assert where(out, "not UTF-8") == [("bad.jsonl", 6)]
    assert where(out, "missing key") == [("bad.jsonl", 4)]
    # The good lines, and only they, in order: identical to the reference on a file of just those lines.
    clean = tmp_path / "clean.jsonl"
    write_lines(clean, good[:4] + [{"text": ""}] + good[4:])
    megatron_reference([str(clean)], str(tmp_path / "ref"), ["text"], GPT2BPETokenizer(*gpt2_files, reference=True))
    assert read_bytes(tmp_path / "ours", "text") == read_bytes(tmp_path / "ref", "text")


def _crash_midway(args_list):
    calls = {"n": 0}
    real = preprocess.append_documents

    def dying(*a):
        real(*a)
        calls["n"] += 1
        if calls["n"] == 2:
            os._exit(3)  # like SIGKILL: no finally, no cleanup

    preprocess.append_documents = dying
    preprocess.main(args_list)


@pytest.mark.parametrize("partitions", [1, 2])
def test_interrupted_run_leaves_no_complete_idx(tmp_path, gpt2_files, monkeypatch, partitions):
    inp = write_jsonl(str(tmp_path / "in.jsonl"), demo_documents(300)[:60])
    vocab, merges = gpt2_files
    args = ["--input", inp, "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", vocab, "--merge-file", merges, "--workers", "2", "--partitions", str(partitions)]
    monkeypatch.setattr(preprocess, "BLOCK_BYTES", 2048)
    child = multiprocessing.get_context("fork").Process(target=_crash_midway, args=(args,))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    assert not os.path.exists(tmp_path / "out_text_document.idx")
    leftovers = [os.path.join(r, n) for r, _, fs in os.walk(tmp_path) for n in fs]
    assert any(".tmp-" in p for p in leftovers)  # the crash happened mid-write
    assert all(".tmp-" in p for p in leftovers if p.endswith(".idx"))  # any index is under a temp name
    # A normal exception cleans its temporaries up and leaves nothing.
    monkeypatch.setattr(preprocess, "append_documents", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        preprocess.main([str(tmp_path / "again") if a == str(tmp_path / "out") else a for a in args])
    assert not [n for n in os.listdir(tmp_path) if n.startswith("again")]


def test_null_and_huggingface_tokenizers(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from omni_mega.data.text.tokenizer import demo_tokenizer

    inp = str(tmp_path / "ids.jsonl")
    write_lines(inp, [{"text": "3 1 4 1 5"}, {"text": "9 2 6"}, {"text": ""}])
    out = preprocess.main(["--input", inp, "--output-prefix", str(tmp_path / "null"), "--tokenizer-type",
                           "NullTokenizer", "--vocab-size", "70000", "--append-eod", "--workers", "1"])
    ds = IndexedDataset(str(tmp_path / "null_text_document"))
    assert ds[0].dtype == np.int32  # 70,001 ids do not fit uint16
    assert [ds[i].tolist() for i in range(len(ds))] == [[3, 1, 4, 1, 5, 70000], [9, 2, 6, 70000]]
    assert out["bad"] == {"tokenizer error": 1}  # int('') fails, as it would in Megatron-LM (which crashes)

    tok = demo_tokenizer(str(tmp_path / "tok"))
    docs = demo_documents(500)[:5]
    write_lines(inp, [{"text": d} for d in docs])
    preprocess.main(["--input", inp, "--output-prefix", str(tmp_path / "hf"), "--tokenizer-type",
                     "HuggingFaceTokenizer", "--tokenizer-model", tok.tokenizer_model, "--workers", "2"])
    ds = IndexedDataset(str(tmp_path / "hf_text_document"))
    assert [ds[i].tolist() for i in range(5)] == [tok.encode(d) for d in docs]


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.main(["--input", str(tmp_path / "nothing*.jsonl"), "--output-prefix", str(tmp_path / "o"),
                         "--tokenizer-type", "NullTokenizer", "--vocab-size", "10", "--workers", "1"])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess.main(["--input", "x", "--output-prefix", "o", "--tokenizer-type", "NullTokenizer",
                         "--vocab-size", "10", "--workers", "3", "--partitions", "2"])
    assert "multiple of --partitions" in capsys.readouterr().err


def test_cli_script_runs(tmp_path, monkeypatch, capsys):
    import runpy

    inp = str(tmp_path / "ids.jsonl")
    write_lines(inp, [{"text": "1 2"}] * 3)
    monkeypatch.setattr(sys, "argv", ["preprocess_data.py", "--input", inp, "--output-prefix", str(tmp_path / "o"),
                                      "--tokenizer-type", "NullTokenizer", "--vocab-size", "10", "--workers", "1",
                                      "--log-interval", "1"])
    runpy.run_path(os.path.join(ROOT, "tools", "preprocess_data.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert "Processed 3 documents" in err and "docs/s" in err and "MB/s" in err
    assert os.path.getsize(tmp_path / "o_text_document.bin") == 3 * 2 * 2  # 3 docs x 2 ids x uint16


class _FakePunkt:
    """Stands in for nltk punkt (not installed here): splits after ". "."""

    def tokenize(self, text):
        import re

        return [s for s in re.split(r"(?<=\. )", text) if s]


def test_split_sentences_writes_sentence_level(tmp_path, gpt2_files, monkeypatch):
    monkeypatch.setattr(preprocess, "build_splitter", lambda lang, keep_newlines: _FakePunkt())
    docs = demo_documents(400)[:30]
    inp = write_jsonl(str(tmp_path / "in.jsonl"), docs)
    run_cli(inp, str(tmp_path / "ours"), gpt2_files, "--split-sentences", "--append-eod")
    split = str(tmp_path / "split.jsonl")  # what Megatron-LM's split step writes: lists of sentences
    write_lines(split, [{"text": _FakePunkt().tokenize(d)} for d in docs])
    megatron_reference([split], str(tmp_path / "ref"), ["text"], GPT2BPETokenizer(*gpt2_files, reference=True),
                       level="sentence")
    assert read_bytes(tmp_path / "ours", "text", "sentence") == read_bytes(tmp_path / "ref", "text", "sentence")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "ours_text_sentence"))
    assert len(ds.document_indices) == 31 and len(ds) > 60  # 30 documents, several sentences each


def test_unencodable_line_is_dropped_from_every_key(tmp_path, gpt2_files):
    """A lone surrogate (valid JSON, not UTF-8 text) in one key: the line is a tokenizer error for all keys, and
    the other lines come out exactly as the reference writes them without it."""
    docs = [{"text": d, "title": d[:30]} for d in demo_documents(300)[:10]]
    bad_line = {"text": "fine text", "title": "lone \ud800 surrogate"}
    inp = str(tmp_path / "in.jsonl")
    write_lines(inp, docs[:4] + [bad_line] + docs[4:])
    out = run_cli(inp, str(tmp_path / "ours"), gpt2_files, "--json-keys", "text", "title", "--append-eod")
    assert out["bad"] == {"tokenizer error": 1} and where(out, "tokenizer error") == [("in.jsonl", 5)]
    clean = str(tmp_path / "clean.jsonl")
    write_lines(clean, docs)
    megatron_reference([clean], str(tmp_path / "ref"), ["text", "title"],
                       GPT2BPETokenizer(*gpt2_files, reference=True))
    for key in ("text", "title"):
        assert read_bytes(tmp_path / "ours", key) == read_bytes(tmp_path / "ref", key), key


@pytest.mark.parametrize("append_eod", [True, False])
def test_pack_documents_matches_the_per_document_loop(append_eod):
    """The block-at-once numpy packing against Megatron-LM's loop, on fresh random sentence lengths with empty
    sentences, empty and failed documents, and a partition split."""
    rng = np.random.default_rng()
    ndocs, eod, partitions = int(rng.integers(1, 40)), 7, 3
    nsent = rng.integers(0, 4, ndocs)
    lens = rng.integers(0, 5, int(nsent.sum())) * (rng.random(int(nsent.sum())) < 0.8)
    keep = rng.random(ndocs) < 0.85
    lens[rng.random(lens.size) < 0.05] = -1  # a failed sentence: its document is not kept
    sent_doc = np.repeat(np.arange(ndocs), nsent)
    keep[sent_doc[lens < 0]] = False
    ids = rng.integers(100, 200, int(np.maximum(lens, 0).sum())).astype(np.uint32)
    packed = encode_blocks.pack_documents(ids, lens, nsent, keep, eod if append_eod else None)
    doc_part = rng.integers(0, partitions, int(keep.sum()))
    split = encode_blocks._split_partitions(packed, doc_part, partitions)
    expected = {p: ([], [], []) for p in range(partitions)}
    pos, sent, kept = 0, 0, 0
    for d in range(ndocs):  # Megatron-LM: drop empty sentences, eod on a non-empty document
        doc_ids, doc_lens = [], []
        for n in lens[sent:sent + nsent[d]]:
            doc_ids += ids[pos:pos + max(n, 0)].tolist()
            pos, doc_lens = pos + max(n, 0), doc_lens + ([int(n)] if n > 0 else [])
        sent += nsent[d]
        if not keep[d]:
            continue
        if doc_ids and append_eod:
            doc_ids, doc_lens[-1] = doc_ids + [eod], doc_lens[-1] + 1
        toks, seqs, counts = expected[int(doc_part[kept])]
        toks += doc_ids
        seqs += doc_lens
        counts.append(len(doc_lens))
        kept += 1
    got = {p: tuple(a.tolist() for a in arrays) for p, arrays in split.items()}
    assert got == {p: e for p, e in expected.items() if e[2]}  # only partitions with documents in the block


# ----------------------------------------------------------------------------------------------------------------
# The .bin/.idx writer without megatron-core, start-up imports, the fast paths against the references.

@pytest.mark.parametrize("vocab_size", [50257, 70000])
def test_idx_writer_bytes_equal_megatron_builder(tmp_path, vocab_size):
    """idx_writer.IndexedWriter (no megatron-core, no torch) writes the bytes megatron-core's IndexedDatasetBuilder
    writes (documents of several sequences, empty ones, both dtypes, partitions merged like add_index), and
    megatron-core's IndexedDataset reads them back."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    from omni_mega.data.text.idx_writer import IndexedWriter, concatenate, optimal_dtype

    rng = np.random.default_rng()
    dtype = optimal_dtype(vocab_size)
    assert dtype == DType.optimal_dtype(vocab_size)
    docs = []
    for _ in range(int(rng.integers(5, 40))):
        lens = [int(n) for n in rng.integers(1, 30, int(rng.integers(0, 4)))]
        docs.append((rng.integers(0, vocab_size, sum(lens)).tolist(), lens))
    halves = (docs[: len(docs) // 2], docs[len(docs) // 2:])
    theirs = []
    for h, part in enumerate(halves):
        b = IndexedDatasetBuilder(str(tmp_path / f"m{h}.bin"), dtype=DType.optimal_dtype(vocab_size))
        for ids, lens in part:
            b.add_document(ids, lens)
        b.finalize(str(tmp_path / f"m{h}.idx"))
        theirs.append(str(tmp_path / f"m{h}"))
    merged = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=DType.optimal_dtype(vocab_size))
    for prefix in theirs:
        merged.add_index(prefix)
    merged.finalize(str(tmp_path / "m.idx"))
    ours = []
    for h, part in enumerate(halves):
        w = IndexedWriter(str(tmp_path / f"o{h}.bin"), dtype)
        if h == 0:
            for ids, lens in part:
                w.add_document(ids, lens)
        elif part:  # many documents in one call, as preprocessing appends a block
            w.add_documents(np.concatenate([np.asarray(i, dtype=dtype) for i, _ in part]),
                            np.concatenate([np.asarray(n, dtype=np.int64) for _, n in part]),
                            np.array([len(n) for _, n in part]))
        ours.append(w)
    ours[0].finalize(str(tmp_path / "o0.idx"))
    concatenate(ours, str(tmp_path / "o.bin"), str(tmp_path / "o.idx"))
    for a, b in (("o0", "m0"), ("o", "m")):
        for ext in ("bin", "idx"):
            assert (tmp_path / f"{a}.{ext}").read_bytes() == (tmp_path / f"{b}.{ext}").read_bytes(), (a, ext)
    ds = IndexedDataset(str(tmp_path / "o"))
    flat = [(ids, lens) for ids, lens in docs]
    seqs = [ids[sum(lens[:k]):sum(lens[:k + 1])] for ids, lens in flat for k in range(len(lens))]
    assert len(ds) == len(seqs) and [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds.document_indices.tolist() == np.concatenate([[0], np.cumsum([len(n) for _, n in docs])]).tolist()


_IMPORTS = """
import runpy, sys
sys.argv = ["preprocess_data.py", *sys.argv[1:]]
try:
    runpy.run_path({tool!r}, run_name="__main__")
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in ("torch", "megatron", "tiktoken", "tokenizers") if m in sys.modules))
"""


def test_start_imports_neither_torch_nor_megatron(tmp_path, gpt2_files):
    """`--help` and a whole GPT-2 run import neither torch nor megatron (nor tiktoken or HF tokenizers)."""
    import subprocess

    code = _IMPORTS.format(tool=os.path.join(ROOT, "tools", "preprocess_data.py"))
    inp = str(tmp_path / "in.jsonl")
    write_lines(inp, [{"text": "Hello world, it's 2024 🙂"}] * 3)
    run = ["--input", inp, "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "GPT2BPETokenizer",
           "--vocab-file", gpt2_files[0], "--merge-file", gpt2_files[1], "--workers", "2", "--append-eod"]
    for args in (["--help"], run):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert "IMPORTED []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]
    assert os.path.getsize(tmp_path / "o_text_document.bin") == 2 * 3 * (len(GPT2BPETokenizer(
        *gpt2_files).encode("Hello world, it's 2024 🙂")) + 1)


HARD_TEXTS = [
    "Plain ASCII text, with numbers 1234567 and it's contractions they'll've.",
    "ünïcödé naïve café, e\u0301 decomposed, ß Ærøskøbing", "日本語のテキストと中文字。한국어 텍스트", "Привет, мир! ١٢٣",
    "emoji 🙂🚀 👩\u200d👩\u200d👧 \U0001FAE8 and CJK Ext. J \U000323B0", "control \x00\x01\x1c\x7f chars\r\n\x0b\x0c end",
    "a literal <|endoftext|> inside, and <|im_start|>user<|im_end|>", "   leading/trailing   \n\n\n  ", "x" * 3000,
    "tabs\t\tand \u3000 ideographic \u2028 separators", "",
]


def _hard_lines(rng):
    """JSON lines over HARD_TEXTS (also as sentence lists), with bad lines in the middle; returns (raw lines,
    good objects in order, {reason: [line numbers]})."""
    good, raw, bad = [], [], {}
    for i in range(60):
        text = rng.choice(HARD_TEXTS) + " " + rng.choice(HARD_TEXTS)
        # title: a second key whose text alone may need the reference (NFC, a matched special token) while the
        # first key's did not
        obj = {"text": text if i % 7 else [text, "", rng.choice(HARD_TEXTS)], "title": rng.choice(HARD_TEXTS)}
        good.append(obj)
        raw.append(json.dumps(obj, ensure_ascii=bool(i % 2)).encode())
    for at, line, reason in ((5, b'{"text": "unterminated', "malformed JSON"), (17, b"\xff not utf-8", "not UTF-8"),
                             (30, b'{"other": 1}', "missing key"), (31, b"[1, 2]", "malformed JSON"),
                             (44, b'{"text": "lone \\ud800 surrogate", "title": "t"}', "tokenizer error")):
        raw.insert(at, line)  # ascending positions: each keeps line number at + 1
        bad.setdefault(reason, []).append(at + 1)
    return raw, good, bad


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "qwen2-special"])
def test_fast_path_byte_identical_to_reference_on_hard_text(tmp_path, gpt2_files, kind, monkeypatch):
    """The C++ path (any --workers: threads) writes the bytes Megatron-LM's algorithm writes with the reference
    tokenizer (pure-Python GPT-2; HF tokenizers for a Qwen2-style tokenizer.json, special-token strings as text,
    or matched with --match-special-tokens) on ASCII, non-ASCII, emoji, control characters, literal special
    tokens, sentence lists, and bad lines in the middle: every good document kept, the bad ones counted with
    their line numbers."""
    from omni_mega.data.text.tokenizer import HuggingFaceTokenizer
    from tests.data.test_tokenizer import QWEN_LIKE, train_byte_level_bpe

    raw, good, bad = _hard_lines(random.Random())
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(raw) + b"\n")
    clean = str(tmp_path / "clean.jsonl")
    write_lines(clean, good)
    if kind == "gpt2":
        tok_args = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", gpt2_files[0], "--merge-file",
                    gpt2_files[1]]
        ref = GPT2BPETokenizer(*gpt2_files, reference=True)
    else:
        path = train_byte_level_bpe(tmp_path / "tokenizer.json", **QWEN_LIKE)
        tok_args = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", path]
        if kind == "qwen2-special":
            tok_args.append("--match-special-tokens")
        ref = HuggingFaceTokenizer(path, special_tokens_as_text=kind == "qwen2")  # tokenize(): HF's own encode
    megatron_reference([clean], str(tmp_path / "ref"), ["text", "title"], ref)
    monkeypatch.setattr(preprocess, "BLOCK_BYTES", 2048)  # many blocks: threads and reordering are used
    for workers in (1, 3):
        out = preprocess.main(["--input", str(inp), "--output-prefix", str(tmp_path / f"w{workers}"), *tok_args,
                               "--workers", str(workers), "--append-eod", "--json-keys", "text", "title"])
        assert out["tokenizer"].startswith("C++") and out["mode"] == ("inline" if workers == 1 else "threads")
        assert out["docs"] == len(good)
        assert {r: [n for _, n in w] for r, w in out["bad_first"].items() if not r.startswith("empty")} == bad
        for key in ("text", "title"):
            assert read_bytes(tmp_path / f"w{workers}", key) == read_bytes(tmp_path / "ref", key), (workers, key)


def test_workers_and_threads_give_identical_bytes(tmp_path, gpt2_files, monkeypatch):
    """--workers 1, 2, 4 (threads) and partitions: the same bytes, and the same as worker processes running the
    pure-Python reference (--reference-bpe)."""
    docs = mixed_docs(80)
    inp = str(tmp_path / "in.jsonl")
    write_lines(inp, docs)
    monkeypatch.setattr(preprocess, "BLOCK_BYTES", 3000)
    outs = {}
    for workers, partitions, extra in ((1, 1, []), (2, 1, []), (4, 1, []), (2, 1, ["--reference-bpe"]),
                                       (4, 2, []), (2, 2, ["--reference-bpe"])):
        name = f"w{workers}p{partitions}{'r' if extra else ''}"
        out = run_cli(inp, str(tmp_path / name), gpt2_files, "--append-eod", "--partitions", str(partitions),
                      *extra, workers=workers)
        assert out["mode"] == ("inline" if workers == 1 else "processes" if extra else "threads")
        outs[name] = read_bytes(tmp_path / name, "text")
    assert outs["w1p1"] == outs["w2p1"] == outs["w4p1"] == outs["w2p1r"]
    assert outs["w4p2"] == outs["w2p2r"] != outs["w1p1"]  # partitions reorder documents, as in Megatron-LM


def test_a_disagreeing_fast_path_falls_back_to_the_reference(tmp_path, gpt2_files, monkeypatch, capsys):
    from omni_mega.data.text import tokenizer

    inp = str(tmp_path / "in.jsonl")
    write_lines(inp, mixed_docs(20))
    run_cli(inp, str(tmp_path / "fast"), gpt2_files, "--append-eod")
    monkeypatch.setattr(tokenizer, "check_fast_path", lambda tok, texts: "the fast tokenizer disagrees (test)")
    out = run_cli(inp, str(tmp_path / "slow"), gpt2_files, "--append-eod")
    assert out["tokenizer"].startswith("reference") and out["mode"] == "processes"
    assert "warning: the fast tokenizer disagrees (test); using the reference tokenizer" in capsys.readouterr().err
    assert read_bytes(tmp_path / "slow", "text") == read_bytes(tmp_path / "fast", "text")
