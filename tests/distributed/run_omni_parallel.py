"""Worker for tests/distributed/test_omni_parallel.py (pytest starts it with torchrun).

`run_omni_parallel.py CKPT OUT` with 2 processes, one launch for every layout (megatron's parallel state is
re-initialized in between, which saves a torchrun start-up per layout):
  1. TP=1 (DP=2 on identical data): for the mlp and vet connectors build the omni model, save it with
     dist_checkpointing under CKPT/<kind>, train 2 steps (each: an image micro-batch + a text-only one): the reference
  2. TP=2, once without and once with sequence parallelism: load (resharded), train the same 2 steps
  3. PP=2: the same; then a frozen-LLM step whose first micro-batch is text-only
Rank 0 writes losses and global grad norms to OUT (JSON). Micro-batches are packed THD text (two sequences in one
row, PackedSeqParams) with two images of different grids, independent of the trainer.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, ViTConfig
from omni_mega.models.factory import build_model
from omni_mega.objectives.lm import LMObjective

SEQ, VOCAB, IMG_ID, IND_IDS = 32, 256, -200, [-301, -302]
PATCH, GRID = 2, [[1, 4, 4], [1, 2, 6]]  # 16 + 12 patches -> 4 + 3 merged tokens
CU = [0, 20, SEQ]  # two text sequences packed in one row (THD)
IMG_SLOTS = [(3, 4), (22, 3)]  # (start, count) of each image's placeholders


def model_config(kind: str) -> ModelConfig:
    return ModelConfig(
        llm=LLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, max_position_embeddings=SEQ),
        vit=ViTConfig(num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=PATCH, pos_embed_grid=4),
        connector=ConnectorConfig(kind=kind, visual_vocab_size=300, num_indicators=2, indicator_token_ids=IND_IDS,
                                  image_token_id=IMG_ID),
    )


def micro_batch(k: int, with_images: bool) -> dict:
    g = torch.Generator().manual_seed(1000 + k)
    ids = torch.randint(0, VOCAB - 10, (1, SEQ + 1), generator=g)
    batch = {}
    if with_images:
        for start, n in IMG_SLOTS:
            ids[0, start:start + n] = IMG_ID
        ids[0, 2], ids[0, 7] = IND_IDS  # image begin / end indicators (used by the VET connector)
        grid = torch.tensor(GRID)
        batch["pixel_values"] = torch.randn(int(grid.prod(1).sum()), 3 * 2 * PATCH * PATCH, generator=g)
        batch["grid_thw"] = grid
    tokens, labels = ids[:, :-1].clone(), ids[:, 1:].clone()
    special = torch.tensor([IMG_ID, *IND_IDS])
    mask = ~(torch.isin(tokens, special) | torch.isin(labels, special))  # as the data sources mask placeholders
    pos = torch.cat([torch.arange(CU[i + 1] - CU[i]) for i in range(len(CU) - 1)])[None]
    cu = torch.tensor(CU, dtype=torch.int32)
    batch.update(tokens=tokens, labels=labels, position_ids=pos, loss_mask=mask.float(), cu_seqlens=cu,
                 max_seqlen=int((cu[1:] - cu[:-1]).max()))
    return batch


# The trainer's own forward step: the LM objective over packed micro-batches.
forward_step = LMObjective().forward_step


def build(kind: str, parallel: ParallelConfig, freeze: tuple[str, ...] = ()):
    model = build_model(model_config(kind), parallel, VOCAB, SEQ, torch.float32)
    for name in freeze:
        for mod in model.named_groups()[name].modules:
            mod.requires_grad_(False)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0, weight_decay=0.01), [ddp])
    return model, ddp, opt


def train_step(ddp, opt, batches: list[dict]) -> tuple[float, float]:
    """One optimizer step over `batches` (one micro-batch each). Returns (mean loss on the last stage or nan,
    global grad norm, `vision_grad_norms` before the update)."""
    ddp.zero_grad_buffer()
    opt.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=ddp, num_microbatches=len(batches),
        seq_length=SEQ, micro_batch_size=1, forward_only=False,
    )
    grads = vision_grad_norms(ddp.module)
    ok, grad_norm, _ = opt.step()
    assert ok, "optimizer step skipped"
    loss = float(torch.stack([x["loss"][0] for x in losses]).mean()) if losses else float("nan")
    return loss, float(grad_norm), grads


def vision_grad_norms(model) -> dict[str, float] | None:
    """Per-parameter gradient norm of the vision tower and connector (first stage; None elsewhere), the full
    tensor's norm even when TP shards it. Finer than the global norm: a missing all-reduce of a small parameter's
    gradient (e.g. a sequence-parallel norm) barely moves the global norm or Adam's next loss."""
    from megatron.core import parallel_state as ps

    if model.vit is None:
        return None
    out = {}
    for prefix, mod in (("vit", model.vit), ("connector", model.connector)):
        for name, p in mod.named_parameters():
            g = getattr(p, "main_grad", p.grad)
            sq = torch.zeros((), dtype=torch.float64) if g is None else g.double().pow(2).sum()
            if getattr(p, "tensor_model_parallel", False):
                torch.distributed.all_reduce(sq, group=ps.get_tensor_model_parallel_group())
            out[f"{prefix}.{name}"] = float(sq.sqrt())
    return out


# ---- the worker ------------------------------------------------------------------------------------------------
STEPS = [[micro_batch(0, True), micro_batch(1, False)], [micro_batch(2, True), micro_batch(3, False)]]


def _run(kind: str, parallel: ParallelConfig, ckpt: str, save: bool) -> dict:
    from omni_mega.training.checkpoint import load_model, save_model

    model, ddp, opt = build(kind, parallel)
    (save_model if save else load_model)([model], f"{ckpt}/{kind}")
    vis = _fingerprint(model)
    steps = [train_step(ddp, opt, mbs) for mbs in STEPS]
    return {"loss": [s[0] for s in steps], "grad_norm": [s[1] for s in steps], "vis": vis, "grads": steps[0][2]}


def _fingerprint(model) -> list[float] | None:
    """Two numbers that change with any visual embedding value or order (first pipeline stage only): the loss
    barely feels the small random-init visual rows, so the vision path is compared directly too."""
    if model.vit is None:
        return None
    b = micro_batch(0, True)
    with torch.no_grad():
        v = model.visual_embeddings(b["pixel_values"], b["grid_thw"]).double()
    w = torch.linspace(-1, 1, v.numel(), dtype=torch.float64).view_as(v)
    return [float(v.pow(2).sum()), float((v * w).sum())]


def _frozen_llm_pp(ckpt: str) -> dict:
    """PP=2, the whole LLM frozen, a text-only micro-batch first: the step must complete on both stages, leave the
    LLM untouched and move the projector (stage 0)."""
    from omni_mega.training.checkpoint import load_model

    model, ddp, opt = build("mlp", ParallelConfig(pp=2), freeze=("llm",))
    load_model([model], f"{ckpt}/mlp")
    llm_before = [p.detach().clone() for p in model.llm.parameters()]
    proj_before = [p.detach().clone() for p in model.connector.parameters()] if model.connector is not None else []
    loss, norm, _ = train_step(ddp, opt, [micro_batch(1, False), micro_batch(0, True)])
    return {
        "frozen_loss": loss, "frozen_grad_norm": norm,
        "llm_unchanged": all(torch.equal(a, b) for a, b in zip(llm_before, model.llm.parameters())),
        "projector_moved": [not torch.equal(a, b) for a, b in zip(proj_before, model.connector.parameters())]
        if proj_before else None,
    }


def _known(x) -> bool:
    nan = lambda e: isinstance(e, float) and e != e  # noqa: E731
    return x is not None and not nan(x) and not (isinstance(x, list) and any(nan(e) for e in x))


def _pick(a, b):
    """First known value across ranks: None / nan mean "not on this pipeline stage" (losses live on the last
    stage, visual fingerprints on the first)."""
    return a if _known(a) else b


def _relayout(parallel: ParallelConfig) -> None:
    """Re-initializes megatron's parallel state in place (one torchrun launch covers every layout)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp)
    model_parallel_cuda_manual_seed(1234)


def main() -> None:
    if __name__ != "__main__":
        return
    import json
    import sys

    import torch.distributed as dist

    from omni_mega.runtime import init_distributed, shutdown

    ckpt, out = sys.argv[1:3]
    init_distributed(ParallelConfig(), seed=1234)  # 2 processes: TP=1, PP=1, DP=2 (both ranks see the same data)
    res = {}
    for kind in ("mlp", "vet"):  # the reference: TP=1, saved through dist_checkpointing
        res[f"{kind}-ref"] = _run(kind, ParallelConfig(), ckpt, save=True)
    _relayout(ParallelConfig(tp=2))
    for kind in ("mlp", "vet"):
        res[f"{kind}-tp2"] = _run(kind, ParallelConfig(tp=2), ckpt, save=False)
        res[f"{kind}-tp2sp"] = _run(kind, ParallelConfig(tp=2, sp=True), ckpt, save=False)
    _relayout(ParallelConfig(pp=2))
    for kind in ("mlp", "vet"):
        res[f"{kind}-pp2"] = _run(kind, ParallelConfig(pp=2), ckpt, save=False)
    res.update(_frozen_llm_pp(ckpt))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, res)
    if dist.get_rank() == 0:
        merged = {}
        for r in gathered:
            for k, v in r.items():
                if isinstance(v, dict):
                    d = merged.setdefault(k, {})
                    for f, x in v.items():
                        d[f] = _pick(d.get(f), x)
                else:
                    merged[k] = _pick(merged.get(k), v)
        with open(out, "w") as f:
            json.dump(merged, f)
    shutdown()


main()
