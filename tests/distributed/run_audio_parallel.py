"""Worker for tests/distributed/test_audio_parallel.py (pytest starts it with torchrun, 2 processes).

`run_audio_parallel.py CKPT OUT`, one launch for every layout: TP=1 (DP=2 on identical data) builds an LLM + audio
encoder + CTC head + audio projector, saves it with dist_checkpointing, and trains 2 steps, each of a CTC
micro-batch (the encoder and head alone, `objective: ctc`'s forward step) and an LM micro-batch whose tokens hold
audio placeholders (the audio placed in the LLM's sequence, `objective: lm`); then TP=2 without and with sequence
parallelism load the checkpoint (resharded) and train the same steps. Rank 0 writes losses and grad norms to OUT.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from omni_mega.config import LLMConfig, ModelConfig, ParallelConfig
from omni_mega.config.model import AudioConfig

SEQ, VOCAB, AUD = 32, 128, -300
CLIPS = [23, 8, 15]  # mel frames per clip: 12 + 4 + 8 encoder states -> 3 + 1 + 2 pooled tokens (pool 4)


def model_config() -> ModelConfig:
    return ModelConfig(llm=LLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, max_position_embeddings=SEQ),
                       audio=AudioConfig(num_layers=2, hidden_size=32, num_attention_heads=4, n_mels=16, pool=4,
                                         ctc_vocab_size=20, audio_token_id=AUD))


def _mel(g) -> tuple[torch.Tensor, torch.Tensor]:
    cu = torch.tensor([0] + torch.tensor(CLIPS).cumsum(0).tolist(), dtype=torch.int32)
    return torch.randn(sum(CLIPS), 16, generator=g), cu


def ctc_batch(k: int) -> dict:
    g = torch.Generator().manual_seed(100 + k)
    mel, cu = _mel(g)
    lengths = torch.tensor([5, 2, 4])
    return {"audio_features": mel, "audio_cu_seqlens": cu, "targets": torch.randint(0, 20, (11,), generator=g),
            "target_lengths": lengths, "task": "ctc"}


def lm_batch(k: int) -> dict:
    g = torch.Generator().manual_seed(200 + k)
    mel, cu = _mel(g)
    ids = torch.randint(0, VOCAB - 8, (SEQ + 1,), generator=g)
    ids[2:5], ids[9:10], ids[20:22] = AUD, AUD, AUD  # 3 + 1 + 2 placeholders, in clip order
    tokens, labels = ids[:-1][None].clone(), ids[1:][None].clone()
    mask = ((tokens != AUD) & (labels != AUD)).float()
    cut = torch.tensor([0, 16, SEQ], dtype=torch.int32)
    pos = torch.cat([torch.arange(16), torch.arange(SEQ - 16)])[None]
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": pos, "cu_seqlens": cut,
            "max_seqlen": 16, "audio_features": mel, "audio_cu_seqlens": cu, "task": "lm"}


def forward_step(data_iterator, model):
    from omni_mega.objectives.ctc import CTCObjective
    from omni_mega.objectives.lm import LMObjective

    batch = next(data_iterator)
    it = iter([{k: v for k, v in batch.items() if k != "task"}])
    obj = CTCObjective(None) if batch["task"] == "ctc" else LMObjective()
    out, loss_func = obj.forward_step(it, model)
    if batch["task"] == "ctc":  # per-token CTC sum -> a mean, so both kinds of micro-batch weigh alike here
        def mean_loss(o, f=loss_func):
            total, n, values = f(o)
            return total / n, values
        return out, mean_loss
    return out, loss_func


def build(parallel: ParallelConfig):
    from omni_mega.models.factory import build_model

    model = build_model(model_config(), parallel, VOCAB, SEQ, torch.float32)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1.0, weight_decay=0.01), [ddp])
    return model, ddp, opt


def train_step(ddp, opt, batches: list[dict]) -> tuple[float, float]:
    ddp.zero_grad_buffer()
    opt.zero_grad()
    losses = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=ddp,
                                         num_microbatches=len(batches), seq_length=SEQ, micro_batch_size=1,
                                         forward_only=False)
    ok, grad_norm, _ = opt.step()
    assert ok, "optimizer step skipped"
    return [float(x["loss"][0] / x["loss"][1]) for x in losses], float(grad_norm)


STEPS = [[ctc_batch(0), lm_batch(0)], [ctc_batch(1), lm_batch(1)]]


def _run(parallel: ParallelConfig, ckpt: str, save: bool) -> dict:
    from omni_mega.training.checkpoint import load_model, save_model

    model, ddp, opt = build(parallel)
    (save_model if save else load_model)([model], ckpt)
    steps = [train_step(ddp, opt, mbs) for mbs in STEPS]
    return {"loss": [x for s in steps for x in s[0]], "grad_norm": [s[1] for s in steps]}


def main() -> None:
    if __name__ != "__main__":
        return
    import json
    import sys

    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from omni_mega.runtime import init_distributed, shutdown

    ckpt, out = sys.argv[1:3]
    init_distributed(ParallelConfig(), seed=1234)
    res = {"ref": _run(ParallelConfig(), ckpt, save=True)}
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    model_parallel_cuda_manual_seed(1234)
    res["tp2"] = _run(ParallelConfig(tp=2), ckpt, save=False)
    res["tp2sp"] = _run(ParallelConfig(tp=2, sp=True), ckpt, save=False)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    shutdown()


main()
