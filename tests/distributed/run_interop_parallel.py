"""Worker for tests/interop/test_interop_parallel.py (pytest starts it with torchrun, 2 processes).

`run_interop_parallel.py WORK OUT`: WORK/refs.pt holds, per architecture, the imported checkpoint dir, inputs,
transformers' logits and greedy ids. One launch, megatron's parallel state re-initialised between layouts:
  1. TP=2: every imported checkpoint loads (resharded from the TP=1 files), gives transformers' logits and greedy
     tokens (the KV cache holds each rank's query groups); then a composed init_from of three sources
     (llm <- hf: Qwen2, vit <- hf: Qwen2-VL, projector <- an imported checkpoint dir) into a Qwen2-VL-shaped model.
  2. PP=2: the same logits through megatron's pipeline schedule (forward only).
Rank 0 writes the results to OUT (JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from omni_mega.config import ParallelConfig, RunConfig


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _build(ck, parallel: ParallelConfig):
    from omni_mega.interop.convert import read_checkpoint_info
    from omni_mega.models.factory import build_model
    from omni_mega.models.llm import padded_vocab_size
    from omni_mega.training.checkpoint import load_checkpoint

    cfg, _ = read_checkpoint_info(ck)
    model = build_model(cfg, parallel, padded_vocab_size(cfg.llm.vocab_size, 1), 256, torch.float32)
    load_checkpoint(ck, [model], None, with_optimizer=False)
    return cfg, model.eval()


def _kw(r):
    return {} if r["pv"] is None else {"pixel_values": r["pv"], "grid_thw": r["grid"]}


def tp2(refs: dict, vocab: int) -> dict:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from omni_mega.inference import Generator, SamplingParams

    out = {}
    for arch, r in refs.items():
        _, model = _build(r["ckpt"], ParallelConfig(tp=2))
        ids = r["ids"]
        with torch.no_grad():
            logits = model(ids, torch.arange(ids.shape[1])[None], None, **_kw(r))
            logits = gather_from_tensor_model_parallel_region(logits)[..., :vocab]
        res = Generator(model, vocab).generate(ids[0], SamplingParams(max_new_tokens=16, eos_token_ids=[2]),
                                               pixel_values=r["pv"], grid_thw=r["grid"])
        out[arch] = {"err": _rel(logits, r["logits"]), "gen": res.ids, "want": r["gen"]}
    return out


def vit_sp(refs: dict) -> dict:
    """The Qwen2-VL family's vision tower at TP=2 with sequence parallelism against TP=2 without it: the tokens are
    split across the ranks after the reordering into attention windows (Qwen2.5-VL), so the windows must survive
    the split. {arch: max relative difference}."""
    out = {}
    for arch, r in refs.items():
        if r["pv"] is None or not arch.startswith("Qwen2"):
            continue
        feats = []
        for sp in (False, True):
            _, model = _build(r["ckpt"], ParallelConfig(tp=2, sp=sp))
            assert model.vit.sp is sp  # the tower really splits its tokens in the second build
            with torch.no_grad():
                feats.append(model.vit(r["pv"], r["grid"]))
        out[arch] = _rel(feats[1], feats[0])
    return out


def composed(refs: dict, work: str) -> dict:
    """Three sources under TP=2; each parameter compared with the same model loaded from its own source alone."""
    from omni_mega.training import init_from

    vl, text = refs["Qwen2VLForConditionalGeneration"], refs["Qwen2ForCausalLM"]
    cfg, model = _build(vl["ckpt"], ParallelConfig(tp=2))
    with torch.no_grad():  # forget the loaded weights: every value must come from init_from
        for p in model.parameters():
            p.normal_()
    spec = {"llm": f"hf:{text['hf_dir']}", "vit": f"hf:{vl['hf_dir']}", "projector": str(vl["ckpt"])}
    run = RunConfig(model=cfg, parallel=ParallelConfig(tp=2))
    from megatron.core import parallel_state as ps

    sources = init_from.prepare(spec, "stages[s].init_from", [model], run, Path(work) / "cache", tp=2,
                                is_rank0=torch.distributed.get_rank() == 0)
    lines = init_from.apply(sources, [model])
    _, ref_vl = _build(vl["ckpt"], ParallelConfig(tp=2))
    _, ref_text = _build(text["ckpt"], ParallelConfig(tp=2))
    text_params = dict(ref_text.named_parameters())
    same = {
        "llm": all(torch.equal(p, text_params[n]) for n, p in model.llm.named_parameters()),
        "vit": all(torch.equal(a, b) for a, b in zip(model.vit.parameters(), ref_vl.vit.parameters())),
        "projector": all(torch.equal(a, b) for a, b in zip(model.connector.parameters(),
                                                            ref_vl.connector.parameters())),
        # the LLM came from the text model, not from the VLM's own LLM
        "llm_not_vl": not all(torch.equal(a, b) for a, b in zip(model.llm.parameters(), ref_vl.llm.parameters())),
    }
    return {"same": same, "lines": lines, "tp_rank": ps.get_tensor_model_parallel_rank()}


def pp2(refs: dict, vocab: int) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    out = {}
    for arch, r in refs.items():
        _, model = _build(r["ckpt"], ParallelConfig(pp=2))
        ids, captured = r["ids"], []

        def forward_step(data_iterator, m):
            next(data_iterator)
            output = m(ids, torch.arange(ids.shape[1])[None], None, **_kw(r))

            def loss_func(t):
                captured.append(t.detach())
                return t.sum() * 0, {}
            return output, loss_func

        with torch.no_grad():
            get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=model,
                                        num_microbatches=1, seq_length=ids.shape[1], micro_batch_size=1,
                                        forward_only=True)
        out[arch] = {"err": _rel(captured[0][..., :vocab], r["logits"]) if captured else None}
    return out


def _relayout(parallel: ParallelConfig) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp)
    model_parallel_cuda_manual_seed(1234)


def main() -> None:
    if __name__ != "__main__":
        return
    import torch.distributed as dist

    from omni_mega.runtime import init_distributed, shutdown

    work, out = sys.argv[1:3]
    refs = torch.load(f"{work}/refs.pt", weights_only=False)
    vocab = refs.pop("__vocab__")
    init_distributed(ParallelConfig(tp=2), seed=1234)
    res = {"tp2": tp2(refs, vocab), "vit_sp": vit_sp(refs), "composed": composed(refs, work)}
    _relayout(ParallelConfig(pp=2))
    res["pp2"] = pp2(refs, vocab)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, res)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    shutdown()


main()
