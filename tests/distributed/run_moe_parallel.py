"""Worker for tests/distributed/test_moe_parallel.py (pytest starts it with torchrun, 2 processes).

`run_moe_parallel.py CKPT OUT`: one launch for every layout (megatron's parallel state is re-initialized in between):
  1. EP=2 (DP=2, each rank holds half of every MoE layer's experts): build a tiny Moonlight-shaped model (a dense
     first layer, then MoE layers with shared experts, sigmoid routing with an expert bias, an aux loss, multi-latent
     attention) through the Trainer, save it with dist_checkpointing under CKPT, train 2 steps;
  2. EP=1 (DP=2): load CKPT (resharded across EP), train the same 2 steps;
  3. TP=2 + SP (DP=1): load, train the same 2 steps;
  4. EP=2 with only the experts trainable (routers frozen): the routers' weights and expert biases stay bitwise equal;
  5. EP=1 resuming the full checkpoint (model + optimizer) the EP=2 run wrote after its 2 steps: its 3rd step.
Rank 0 writes per-step losses, grad norms, aux losses and router gradient norms to OUT (JSON).
"""

from __future__ import annotations

import json
import sys

import torch

from omni_mega.config import ParallelConfig, load_config

TINY = [
    "model.llm.num_layers=3", "model.llm.hidden_size=64", "model.llm.num_attention_heads=4",
    "model.llm.max_position_embeddings=64", "model.llm.ffn_hidden_size=128",
    "model.llm.num_moe_experts=4", "model.llm.moe_router_topk=2", "model.llm.moe_ffn_hidden_size=32",
    "model.llm.moe_shared_expert_intermediate_size=32", "model.llm.moe_layer_freq=[0, 1, 1]",
    "model.llm.moe_router_score_function=sigmoid", "model.llm.moe_router_enable_expert_bias=true",
    "model.llm.moe_aux_loss_coeff=0.01",
    "model.llm.multi_latent_attention=true", "model.llm.kv_lora_rank=32", "model.llm.qk_head_dim=16",
    "model.llm.qk_pos_emb_head_dim=8", "model.llm.v_head_dim=16",
    "data.seq_length=32", "data.micro_batch_size=2", "data.global_batch_size=8", "optim.warmup_steps=0",
    "optim.lr=1e-3", "train.tensorboard=false", "stages=[{name: s, steps: 3}]",
]
LAYOUTS = {"ep2": ParallelConfig(ep=2), "ep1": ParallelConfig(), "tp2sp": ParallelConfig(tp=2, sp=True)}


def relayout(parallel: ParallelConfig):
    """Re-initializes megatron's parallel state in place; returns a Runtime for it."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from omni_mega.runtime.distributed import Runtime
    from omni_mega.runtime.env import detect

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=parallel.tp, expert_model_parallel_size=parallel.ep)
    model_parallel_cuda_manual_seed(1234)
    torch.manual_seed(1234)
    env = detect()
    return Runtime(env=env, parallel=parallel, device=torch.device("cpu"), dp=env.world_size // parallel.tp)


def routers(trainer) -> list:
    return [m for c in trainer.chunks for m in c.modules() if type(m).__name__ == "OmniTopKRouter"]


def router_grad_norm(trainer) -> float:
    grads = [getattr(r.weight, "main_grad", None) if r.weight.requires_grad else None for r in routers(trainer)]
    return sum(float(g.double().pow(2).sum()) for g in grads if g is not None) ** 0.5


def config(name: str, out: str, extra: list[str] | None = None):
    par = LAYOUTS[name]
    return load_config(None, TINY + [f"parallel.tp={par.tp}", f"parallel.sp={str(par.sp).lower()}",
                                     f"parallel.ep={par.ep}", f"data.data_dir={out}.data"] + (extra or []))


def run(name: str, ckpt: str, out: str, extra: list[str] | None = None, save: bool = False) -> dict:
    from omni_mega.training.checkpoint import load_model, save_model
    from omni_mega.training.trainer import Trainer

    cfg = config(name, out, extra)
    rt = relayout(LAYOUTS[name])
    trainer = Trainer(cfg, rt, run_dir=f"{out}.{name}{'-frozen' if extra else ''}")
    (save_model if save else load_model)(trainer.model, ckpt)
    before = [(r.weight.detach().clone(), r.expert_bias.clone()) for r in routers(trainer)]
    experts_before = [p.detach().clone() for c in trainer.chunks for n, p in c.named_parameters() if ".experts." in n]
    res = {"loss": [], "grad_norm": [], "aux": [], "router_grad": []}
    for _ in range(2):
        r = trainer.train_step()
        res["loss"].append(r.loss)
        res["grad_norm"].append(r.grad_norm)
        res["aux"].append(r.metrics.get("moe_aux_loss"))
        res["router_grad"].append(router_grad_norm(trainer))
    res["routers_unchanged"] = all(torch.equal(w, r.weight) and torch.equal(b, r.expert_bias)
                                   for (w, b), r in zip(before, routers(trainer)))
    res["bias_moved"] = any(not torch.equal(b, r.expert_bias) for (_, b), r in zip(before, routers(trainer)))
    after = [p for c in trainer.chunks for n, p in c.named_parameters() if ".experts." in n]
    res["experts_moved"] = all(not torch.equal(a, b) for a, b in zip(experts_before, after))
    res["local_experts"] = sum(len(c.decoder.layers[1].mlp.experts.local_experts) for c in trainer.chunks)
    if save:  # a full checkpoint (model + optimizer) after 2 steps, then the 3rd step: what a resume must repeat
        trainer.save()
        res["step3"] = trainer.train_step().loss
    trainer.metrics.close()
    trainer.lock and trainer.lock.release()
    return res


def resume(name: str, run_dir: str, out: str) -> float:
    """Resumes the EP=2 run's step-2 checkpoint under another layout (model and optimizer resharded across EP) and
    takes its 3rd step."""
    import shutil

    from omni_mega.training.trainer import Trainer

    rt = relayout(LAYOUTS[name])
    copy = f"{out}.resume-{name}"
    if rt.is_rank0:
        shutil.copytree(run_dir, copy)
    torch.distributed.barrier()
    trainer = Trainer(config(name, out), rt, run_dir=copy, resume="auto")
    loss = trainer.train_step().loss
    trainer.metrics.close()
    trainer.lock and trainer.lock.release()
    return loss


def main() -> None:
    if __name__ != "__main__":
        return
    import torch.distributed as dist

    from omni_mega.runtime import init_distributed, shutdown

    ckpt, out = sys.argv[1:3]
    init_distributed(ParallelConfig(ep=2), seed=1234)
    res = {"ep2": run("ep2", ckpt, out, save=True)}
    res["ep1"] = run("ep1", ckpt, out)
    res["tp2sp"] = run("tp2sp", ckpt, out)
    res["frozen"] = run("ep2", ckpt, out, extra=["stages=[{name: s, steps: 3, trainable: [llm.experts]}]"])
    res["resumed_ep1"] = resume("ep1", f"{out}.ep2", out)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, res)
    if dist.get_rank() == 0:
        res["per_rank_local_experts"] = [g["ep2"]["local_experts"] for g in gathered]
        with open(out, "w") as f:
            json.dump(res, f)
    shutdown()


main()
