"""bench_omni_step: one training step (forward + backward + AdamW) of the omni model: ViT + connector + GPTModel.

Presets:
  tiny (CPU default): 2-layer 128-wide LLM, 2-layer 64-wide ViT, 2 images of 112x112 (patch 14), 256 text tokens.
  1b   (CUDA default): ~1.1B LLM (18 layers, h 2048, SwiGLU 5632, vocab 32k) + ~300M ViT (24 layers, h 1024,
       GELU 4096), bf16, 8 images of 448x448 (2048 merged visual tokens) in a 4096-token packed sequence.
Reports step time, peak memory, text tokens/s, and MFU counting ViT, connector and LLM FLOPs (training = 3x the
forward matmul FLOPs; attention counted per packed segment, causal half for the LLM; embedding lookups excluded).
Single process (TP = PP = 1); `--out` writes benchmarks/results/<date>_<device>_omni_step.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import harness  # noqa: E402

PRESETS = {
    "tiny": dict(llm=dict(num_layers=2, hidden_size=128, num_attention_heads=4), vocab=512,
                 vit=dict(num_layers=2, hidden_size=64, num_attention_heads=4, patch_size=14),
                 images=2, image_px=112, text=256, dtype="float32"),
    "1b": dict(llm=dict(num_layers=18, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=5632), vocab=32000,
               vit=dict(num_layers=24, hidden_size=1024, num_attention_heads=16, patch_size=14,
                        ffn_hidden_size=4096),
               images=8, image_px=448, text=2048, dtype="bfloat16"),
}


def build(preset: dict, kind: str, device: torch.device):
    from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, ViTConfig
    from omni_mega.models.factory import build_model
    from omni_mega.models.llm import padded_vocab_size

    dtype = getattr(torch, preset["dtype"])
    cfg = ModelConfig(llm=LLMConfig(**preset["llm"]), vit=ViTConfig(**preset["vit"]),
                      connector=ConnectorConfig(kind=kind, visual_vocab_size=8192))
    seq = preset["text"] + preset["images"] * (preset["image_px"] // 28) ** 2
    model = build_model(cfg, ParallelConfig(), padded_vocab_size(preset["vocab"], 1), seq, dtype).to(device)
    return cfg, model, seq, dtype


def batch(cfg, preset: dict, seq: int, dtype, device):
    """One packed row: `images` images (each followed by text) and the text remainder; THD over the text axis."""
    from megatron.core.packed_seq_params import PackedSeqParams

    g = cfg.vit.patch_size
    side = preset["image_px"] // g
    n_img, per_img = preset["images"], (side // 2) ** 2
    grid = torch.tensor([[1, side, side]] * n_img)
    feat = cfg.vit.in_channels * cfg.vit.temporal_patch_size * g * g
    px = torch.randn(n_img * side * side, feat, device=device, dtype=dtype)
    ids = torch.randint(0, preset["vocab"], (1, seq), device=device)
    text_per = preset["text"] // n_img
    for i in range(n_img):  # [text_per text][per_img placeholders] per image
        start = i * (text_per + per_img) + text_per
        ids[0, start:start + per_img] = cfg.connector.image_token_id
    labels = torch.randint(0, preset["vocab"], (1, seq), device=device)
    bounds = list(range(0, seq, seq // 2)) + [seq]  # two packed documents
    cu = torch.tensor(sorted(set(bounds)), dtype=torch.int32, device=device)
    pos = torch.cat([torch.arange(b - a) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]).to(device)[None]
    longest = int((cu[1:] - cu[:-1]).max())
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                          max_seqlen_kv=longest)
    b = dict(input_ids=ids, position_ids=pos, labels=labels, pixel_values=px, grid_thw=grid, packed_seq_params=psp)
    return b, [side * side] * n_img, (cu[1:] - cu[:-1]).tolist()


def step_flops(model, cfg, vit_segments: list[int], llm_segments: list[int]) -> float:
    """Training FLOPs of one step: 6 x (matmul params) x tokens + attention (3 x 4 x L x h x sum len^2)."""
    def matmul_params(mod, skip=()):
        return sum(p.numel() for n, p in mod.named_parameters() if p.dim() == 2 and not any(s in n for s in skip))

    T = sum(vit_segments)
    vit, llm = cfg.vit, cfg.llm
    f_vit = 6 * matmul_params(model.vit) * T + 12 * vit.num_layers * vit.hidden_size * sum(n * n for n in vit_segments)
    f_conn = 6 * matmul_params(model.connector) * (T // vit.merge_size ** 2)
    s = sum(llm_segments)
    f_llm = 6 * matmul_params(model.llm, skip=("word_embeddings",)) * s \
        + 12 * llm.num_layers * llm.hidden_size * sum(n * n for n in llm_segments) / 2  # causal half
    return float(f_vit + f_conn + f_llm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default=None, choices=list(PRESETS), help="default: tiny on CPU, 1b on CUDA")
    ap.add_argument("--connector", default="both", choices=["mlp", "vet", "both"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_omni_step.md")
    args = ap.parse_args()
    preset_name = args.preset or ("1b" if args.device == "cuda" else "tiny")
    preset = PRESETS[preset_name]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    from omni_mega.config import ParallelConfig
    from omni_mega.runtime import init_distributed, shutdown

    rt = init_distributed(ParallelConfig(), seed=1234)
    device = rt.device
    results = []
    for kind in (["mlp", "vet"] if args.connector == "both" else [args.connector]):
        cfg, model, seq, dtype = build(preset, kind, device)
        b, vit_segs, llm_segs = batch(cfg, preset, seq, dtype, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device == "cuda")

        def step():
            loss = model(b["input_ids"], b["position_ids"], None, labels=b["labels"], pixel_values=b["pixel_values"],
                         grid_thw=b["grid_thw"], packed_seq_params=b["packed_seq_params"]).float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        flops = step_flops(model, cfg, vit_segs, llm_segs)
        params = sum(p.numel() for p in model.parameters())
        r = harness.measure("omni_step", f"{kind} ({params / 1e6:.1f}M params)", "full",
                            f"{preset_name}: {len(vit_segs)} img x {vit_segs[0]} patches, seq {seq}", step,
                            device=args.device, warmup=5, repeats=args.repeats, flops=flops, flops_dtype="bf16")
        r.extra["text tok/s"] = round(seq / (r.ms * 1e-3))
        r.extra["GFLOP/step"] = round(flops / 1e9, 2)
        r.extra["GFLOP/s"] = round(flops / (r.ms * 1e-3) / 1e9, 2)
        results.append(r)
        del model, opt
    notes = ("FLOPs: 6 x matmul parameters x tokens (ViT on patches, connector on merged tokens, LLM on the "
             "sequence) + attention 12 x layers x hidden x sum(segment_len^2) (halved for the causal LLM). MFU = the "
             "%peak column: FLOP/s over the device's dense bf16 peak (GPU only; the goal on an H100 is >= 40%). CPU "
             "numbers are a development-mode smoke measure (megatron-core in CPU mode, gloo), not a performance "
             "target.")
    if args.device == "cpu":
        notes += f" Load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)."
    out = harness.results_path("omni_step") if args.out else None
    harness.emit(results, title="omni_step: ViT + connector + GPTModel training step", out=out, notes=notes)
    shutdown()


if __name__ == "__main__":
    main()
