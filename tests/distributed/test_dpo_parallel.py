"""DPO sequence log-probs under TP=2 and PP=2 equal TP=1: the same weights (through dist_checkpointing), the same
text preference pairs, the same reference pass at the stage start; the DPO loss and gradient norm of two steps
agree, so the log-probs of chosen and rejected replies (and their reference values) did."""

import json

import pytest

from tests.distributed.launch import torchrun

WORKER = "run_parallel_equivalence.py"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from omni_mega.data.conversations.preprocess import main

    d = tmp_path_factory.mktemp("pairs")
    lines = [json.dumps({"prompt": f"What is {a} plus {b}?", "chosen": f"It is {a + b}.",
                         "rejected": f"It is {a + b + 1 + (a % 3)}."}) for a in range(8) for b in range(4)]
    (d / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    main(["--input", str(d / "pairs.jsonl"), "--output-dir", str(d / "ds"), "--kind", "preference"])
    return d / "ds"


def _dpo(pairs) -> list[str]:
    return [f"--set=stages=[{{name: s, steps: 2, objective: dpo, dpo: {{beta: 0.2}}, "
            f"data: [{{name: p, source: conversations, path: '{pairs}'}}]}}]", "--set=optim.lr=3e-3",
            "--set=data.micro_batch_size=1", "--set=data.seq_length=128", "--set=data.pack_window=16",
            "--set=model.llm.max_position_embeddings=256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs):
    d = tmp_path_factory.mktemp("dpo_equiv")
    ckpt, out = d / "ckpt", d / "ref.json"
    torchrun(WORKER, ["save", str(ckpt), str(out), *_dpo(pairs)], nproc=1)
    return ckpt, json.loads(out.read_text())


@pytest.mark.parametrize("layout", [["--set=parallel.tp=2"], ["--set=parallel.pp=2"]], ids=["tp2", "pp2"])
def test_dpo_layout_matches_single_process(reference, pairs, layout, tmp_path):
    ckpt, ref = reference
    out = tmp_path / "out.json"
    torchrun(WORKER, ["load", str(ckpt), str(out), *_dpo(pairs), *layout], nproc=2)
    got = json.loads(out.read_text())
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), (got, ref)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (got, ref)
    assert ref["loss"][1] < ref["loss"][0]  # the step moved the policy: not a trivially equal pair of zeros
