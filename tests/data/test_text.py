"""GPT text batches: the packed THD contract, plain batches, blends of GPTDatasets, exact resume in a new process."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_mega.data.text import preprocess
from omni_mega.data.blend import BlendSchedule, StageMix
from omni_mega.data.demo.corpus import demo_documents, write_jsonl
from omni_mega.data.text import (PackedTextBatches, TextDataConfig, build_text_sources, demo_text_batches,
                                 to_packed_seq_params)
from omni_mega.data.text.tokenizer import demo_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S = 128


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo corpus preprocessed into two sources (first and second half of the documents) + the demo tokenizer."""
    work = tmp_path_factory.mktemp("text")
    tok = demo_tokenizer(str(work / "tok"), vocab_size=1024)
    docs = demo_documents(150)
    prefixes = {}
    for name, part in (("first", docs[: len(docs) // 2]), ("second", docs[len(docs) // 2:])):
        inp = write_jsonl(str(work / f"{name}.jsonl"), part)
        preprocess.main(["--input", inp, "--output-prefix", str(work / name), "--tokenizer-type",
                         "HuggingFaceTokenizer", "--tokenizer-model", tok.tokenizer_model, "--append-eod",
                         "--workers", "1"])
        prefixes[name] = str(work / f"{name}_text_document")
    return work, tok, prefixes, set(docs)


def sources_for(demo, num_samples=300):
    work, tok, prefixes, _ = demo
    cfg = TextDataConfig(seq_length=S, seed=7, cache_dir=str(work / "cache"))
    return build_text_sources(prefixes, tok, cfg, num_samples)


def segments_by_loop(tokens, eod):
    """Reference: segment ends after every EOD, and at the end."""
    bounds = [0]
    for t, tok in enumerate(tokens):
        if tok == eod and t + 1 < len(tokens):
            bounds.append(t + 1)
    return bounds + [len(tokens)]


def test_packed_contract_on_demo_corpus(demo):
    _, tok, _, docs = demo
    batches = PackedTextBatches(sources_for(demo), {"first": 1.0, "second": 1.0}, tok.eod, seed=7)
    whole_docs = 0
    for _ in range(60):
        b = next(batches)
        assert b["tokens"].shape == b["labels"].shape == b["position_ids"].shape == b["loss_mask"].shape == (1, S)
        assert (b["tokens"].dtype, b["labels"].dtype, b["position_ids"].dtype) == (torch.int64,) * 3
        assert b["loss_mask"].dtype == torch.float32 and b["cu_seqlens"].dtype == torch.int32
        tokens = b["tokens"][0].tolist()
        bounds = segments_by_loop(tokens, tok.eod)
        assert b["cu_seqlens"].tolist() == bounds
        assert b["max_seqlen"] == max(e - s for s, e in zip(bounds, bounds[1:]))
        expect_pos = [t - s for s, e in zip(bounds, bounds[1:]) for t in range(s, e)]
        assert b["position_ids"][0].tolist() == expect_pos
        assert b["labels"][0, :-1].tolist() == tokens[1:]
        for s, e in zip(bounds, bounds[1:]):
            seg = tokens[s:e]
            assert tok.eod not in seg[:-1]  # attention inside a segment never crosses a document end
            if s > 0 and seg[-1] == tok.eod:  # a whole document: it must be one of the corpus documents
                assert tok.decode(seg[:-1]) in docs
                whole_docs += 1
    assert whole_docs >= 5
    assert batches.non_pad_fraction >= 0.99
    params = to_packed_seq_params(b)
    assert params.qkv_format == "thd" and torch.equal(params.cu_seqlens_kv, b["cu_seqlens"])


def test_plain_batches_and_data_parallel_slices(demo):
    _, tok, _, _ = demo
    sources = sources_for(demo)
    mix = {"first": 3.0, "second": 1.0}
    whole = PackedTextBatches(sources, mix, tok.eod, packed=False, micro_batch_size=2, seed=7)
    ranks = [PackedTextBatches(sources, mix, tok.eod, packed=False, micro_batch_size=1, seed=7, dp_rank=r, dp_size=2)
             for r in range(2)]
    for _ in range(4):
        b = next(whole)
        assert b["tokens"].shape == (2, S) and b["loss_mask"].shape == (2, S)
        assert torch.equal(b["position_ids"], torch.arange(S).expand(2, S))
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p["tokens"] for p in parts]), b["tokens"])  # rank r holds row r
        assert [p["source"][0] for p in parts] == b["source"]
    with pytest.raises(ValueError, match="micro_batch_size must be 1"):
        PackedTextBatches(sources, mix, tok.eod, packed=True, micro_batch_size=2)


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    from omni_mega.data.text import PackedTextBatches, TextDataConfig, build_text_sources
    from omni_mega.data.text.tokenizer import demo_tokenizer
    from omni_mega.data.blend import BlendSchedule
    work, state_path, out_path, n, prefixes, schedule = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
        eval(sys.argv[5]), BlendSchedule.from_dict(eval(sys.argv[6]))
    tok = demo_tokenizer(work + "/tok", vocab_size=1024)
    cfg = TextDataConfig(seq_length={S}, seed=7, cache_dir=work + "/cache")
    batches = PackedTextBatches(build_text_sources(prefixes, tok, cfg, 300), schedule, tok.eod, seed=7)
    batches.load_state_dict(torch.load(state_path))
    torch.save([next(batches) for _ in range(n)], out_path)
""").replace("{S}", str(S))


def test_resume_in_a_new_process_continues_exactly(demo, tmp_path):
    work, tok, prefixes, _ = demo
    schedule = BlendSchedule([StageMix("a", 6, {"first": 1.0}),
                              StageMix("b", 20, {"first": 1.0, "second": 0.0}, end_weights={"first": 0.0,
                                                                                              "second": 1.0})])
    k, n = 9, 6
    straight = PackedTextBatches(sources_for(demo), schedule, tok.eod, seed=7)
    expected = [next(straight) for _ in range(k + n)][k:]
    first = PackedTextBatches(sources_for(demo), schedule, tok.eod, seed=7)
    for _ in range(k):
        next(first)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(work), str(tmp_path / "state.pt"), str(tmp_path / "out.pt"),
                           str(n), repr(prefixes), repr(schedule.to_dict())], capture_output=True, text=True,
                          timeout=180, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(tmp_path / "out.pt")
    assert {b["source"][0] for b in expected} == {"first", "second"}  # the resume point is inside the ramp
    for got, want in zip(resumed, expected, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert (torch.equal(got[key], want[key]) if torch.is_tensor(want[key]) else got[key] == want[key]), key


def test_demo_text_batches_end_to_end(tmp_path):
    batches = demo_text_batches(str(tmp_path), seq_length=64, num_samples=50)
    for _ in range(20):
        b = next(batches)
    assert b["tokens"].shape == (1, 64) and int(b["cu_seqlens"][-1]) == 64
    assert batches.non_pad_fraction >= 0.99
