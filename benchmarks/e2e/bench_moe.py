"""Step time of a mixture-of-experts GPT against a dense GPT of the same activated size, both through our Trainer:
what routing, dispatch (megatron's allgather dispatcher on CPU, alltoall on a GPU) and the grouped expert MLPs cost
per token. The dense model's MLP width is the MoE layer's activated width (top-k routed experts + the shared
expert), so both do about the same matmul FLOPs per token; the MoE model holds ~3x the parameters.

    python benchmarks/e2e/bench_moe.py [--out] [--rounds 3]     (single process, EP=1; OMP_NUM_THREADS sets threads)

On a GPU it reports tokens/s and MFU counting activated parameters (6 x activated x tokens + attention).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from benchmarks.harness import Result, emit, measure, results_path  # noqa: E402

# tiny_moe.yaml's shapes (8 experts of 96, top-2, one shared expert of 96, sigmoid router with expert bias), with the
# dense first layer at the activated width so the two models differ only in the MoE layers.
CPU = [dict(shape=["model.llm.num_layers=4", "model.llm.hidden_size=128", "model.llm.num_attention_heads=4",
                   "model.llm.max_position_embeddings=512", "data.seq_length=128", "data.micro_batch_size=2",
                   "data.global_batch_size=8"],
            experts=8, topk=2, expert_ffn=96, shared=96, dispatcher="allgather"),
       # 4x wider: the routing and dispatch cost grows with tokens x hidden, the expert matmuls with hidden x FFN
       dict(shape=["model.llm.num_layers=4", "model.llm.hidden_size=512", "model.llm.num_attention_heads=8",
                   "model.llm.max_position_embeddings=512", "data.seq_length=256", "data.micro_batch_size=2",
                   "data.global_batch_size=4"],
            experts=8, topk=2, expert_ffn=384, shared=384, dispatcher="allgather")]
# Moonlight's expert shape (FFN 1,408, top-6 of 64 would not fit one GPU with its optimizer state): 16 experts, top-2,
# one shared expert, ~1.9B total / ~0.6B activated, bf16.
GPU = [dict(shape=["model.llm.num_layers=12", "model.llm.hidden_size=2048", "model.llm.num_attention_heads=16",
                   "model.llm.vocab_size=50304", "model.llm.max_position_embeddings=2048", "data.seq_length=2048",
                   "data.micro_batch_size=2", "data.global_batch_size=8", "train.dtype=bf16"],
            experts=16, topk=2, expert_ffn=1408, shared=1408, dispatcher="alltoall")]


def overrides(p: dict, moe: bool) -> list[str]:
    active = p["topk"] * p["expert_ffn"] + p["shared"]
    common = p["shape"] + ["model.llm.normalization=RMSNorm", "model.llm.activation=swiglu",
                           f"model.llm.ffn_hidden_size={active}"]
    if not moe:
        return common
    layers = int(next(s for s in p["shape"] if "num_layers" in s).split("=")[1])
    return common + [f"model.llm.num_moe_experts={p['experts']}", f"model.llm.moe_router_topk={p['topk']}",
                     f"model.llm.moe_ffn_hidden_size={p['expert_ffn']}",
                     f"model.llm.moe_shared_expert_intermediate_size={p['shared']}",
                     f"model.llm.moe_layer_freq={[0] + [1] * (layers - 1)}",
                     "model.llm.moe_router_score_function=sigmoid", "model.llm.moe_router_enable_expert_bias=true",
                     "model.llm.moe_aux_loss_coeff=0.001", f"model.llm.moe_token_dispatcher_type={p['dispatcher']}"]


def build(ovr: list[str], run_dir: str, rt):
    from omni_mega.config import load_config
    from omni_mega.training.trainer import Trainer

    cfg = load_config(None, ovr + ["train.tensorboard=false", "optim.warmup_steps=2",
                                   "stages=[{name: bench, steps: 100000}]"])
    return Trainer(cfg, rt, run_dir), cfg


def counts(cfg) -> tuple[int, int]:
    """(total, activated per token) LLM parameters, as --dry-run counts them."""
    from omni_mega.training.dry_run import leaves

    lv = {k: x for k, x in leaves(cfg).items() if k.startswith("llm.")}
    return sum(x.total for x in lv.values()), sum(x.activated for x in lv.values())


def step_fn(tr):
    def step():
        tr.train_step()

    return step


def compare(p: dict, tmp: str, device: str, rounds: int, rt) -> list[Result]:
    """The dense and the MoE model of one profile, measured in alternating rounds."""
    models = {}
    for name, moe in (("dense (same activated size)", False), ("MoE", True)):
        tr, cfg = build(overrides(p, moe), os.path.join(tmp, "moe" if moe else "dense"), rt)
        total, active = counts(cfg)
        d, llm = cfg.data, cfg.model.llm
        tokens = d.global_batch_size * d.seq_length
        flops = 6 * active * tokens + 12 * llm.num_layers * d.seq_length * llm.hidden_size * tokens
        shape = (f"L{llm.num_layers} h{llm.hidden_size} s{d.seq_length} gbs{d.global_batch_size}"
                 + (f" E{llm.num_moe_experts} top{llm.moe_router_topk} f{llm.moe_ffn_hidden_size}"
                    if llm.num_moe_experts else f" ffn{llm.ffn_hidden_size}"))
        models[name] = (tr, shape, total, active, tokens, flops)
    best: dict[str, Result] = {}
    for _ in range(rounds):  # alternate so background load hits both models alike
        for name, (tr, shape, total, active, tokens, flops) in models.items():
            r = measure("train_step", name, "full", shape, step_fn(tr), device=device, warmup=2, repeats=5,
                        flops=flops)
            if name not in best or r.ms < best[name].ms:
                best[name] = r
    base = best["dense (same activated size)"].ms
    for name, r in best.items():
        tr, _, total, active, tokens, _ = models[name]
        r.extra.update({"params (M)": round(total / 1e6, 2), "activated (M)": round(active / 1e6, 2),
                        "tokens/s": round(tokens / (r.ms * 1e-3)), "x dense time": round(r.ms / base, 2)})
        tr.metrics.close()
    return list(best.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_moe.md")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per model (best median kept)")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    from omni_mega.config import load_config
    from omni_mega.runtime import init_distributed

    cuda = torch.cuda.is_available()
    device, profiles = ("cuda", GPU) if cuda else ("cpu", CPU)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    rt = init_distributed(load_config(None, ["name=bench"]).parallel, seed=1)
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    for p in profiles:
        with tempfile.TemporaryDirectory() as tmp:
            results += compare(p, tmp, device, args.rounds, rt)
    notes = (f"{'bf16' if cuda else 'fp32'}, single process (EP=1), dispatcher {profiles[0]['dispatcher']}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average before {load_before:.1f}, "
             f"after {os.getloadavg()[0]:.1f}. ms = best of {args.rounds} alternating rounds of the median of 5 "
             "Trainer steps (fwd + bwd + optimizer). TFLOP/s and %peak (GPU) count activated parameters: "
             "6 x activated x tokens + 12 L s h tokens for attention; the router's and the shared expert's FLOPs are "
             "in the activated count, the dispatch (gathers, permutations) is not.")
    emit(results, title="MoE step vs dense of the same activated size",
         out=results_path("moe") if args.out else None, notes=notes)


if __name__ == "__main__":
    main()
