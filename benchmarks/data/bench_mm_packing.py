"""Multimodal sequence packing on the built-in demo data: packing efficiency, token share, data-parallel visual
balance, and throughput of planning (sizes only) and of building packs (read + decode + resize + pack_images).

Rows per (multimodal ratio, pack length): the demo image-text set (`omni_mega.data.demo.scenes`, 3,000 rendered-text and
shape images 28-112 px tall) mixed with `pydoc_data.topics` documents, patch 14, merge 2, min 56*56 pixels, the
visual budget = the pack length, pack_window 256 (the config defaults). Modes:
  - plan: windows drawn and best-fit-decreasing packed from index sizes (no decode): time per pack;
  - full: one step of --gbs packs built (records read, images decoded with Pillow threads, pack_images): time per step.
With --device cuda the full mode decodes with DALI mixed (GPU) and packs on the GPU (CUDA events, GB/s, %HBM of
the pixels written); that needs nvidia-dali and a GPU.

    .venv/bin/python benchmarks/data/bench_mm_packing.py [--packs 512] [--gbs 8] [--dp 2] [--device cpu] [--out]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import harness  # noqa: E402
from omni_mega.data import packing as mp  # noqa: E402
from omni_mega.data.demo.scenes import build_demo_data  # noqa: E402
from omni_mega.data.demo.text import DemoTextDocs  # noqa: E402
from omni_mega.data.pack_stream import PackingSpec  # noqa: E402
from omni_mega.data.packed_source import PackedSource  # noqa: E402
from omni_mega.data.multimodal.shards import MMShardDataset  # noqa: E402
from omni_mega.data.source import StepSlice  # noqa: E402


def make_source(ds, ratio: float, seq: int, packs: int, backend: str) -> PackedSource:
    # tiny_omni's settings: byte tokens (EOD 256, SEP "\n"), LLaVA's placeholder id, Qwen2-VL's patching and bounds.
    spec = PackingSpec(seq_length=seq, visual_budget=seq, pack_window=256, ratio_start=ratio, ratio_end=ratio,
                       stage_packs=packs, stage_start=0, stage_index=0, seed=1234, image_token_id=-200, eod=256, sep=10,
                       patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                       max_pixels=28 * 28 * 1280)
    text = [DemoTextDocs(0, max_tokens=seq + 1)] if ratio < 1 else []  # as build_source cuts them
    mm = [ds] if ratio > 0 else []
    return PackedSource(spec, text, [1.0] * len(text), mm, [1.0] * len(mm), decode_backend=backend)


def quality(ds, ratio: float, seq: int, packs: int, gbs: int, dp: int) -> dict:
    """Efficiency, share and dp imbalance over `packs` planned packs."""
    src = make_source(ds, ratio, seq, packs, "pillow")
    gaps = []
    for step in range(packs // gbs):
        vis = [sum(s.visual for s in p) for p in src.step_packs(gbs)]
        loads = [sum(vis[i] for i in r) for r in mp.assign_to_ranks(vis, dp, gbs // dp)]
        gaps.append((max(loads) - min(loads)) / max(1, max(loads)))
        src.advance(gbs)
    return {"efficiency_%": round(100 * src.packing_efficiency(), 2),
            "mm_share_%": round(100 * src.multimodal_share(), 1),
            "dp_imbalance_%": round(100 * sum(gaps) / max(1, len(gaps)), 1), "skipped": sum(src.skipped.values())}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", type=int, default=512, help="packs planned per row (efficiency, plan time)")
    ap.add_argument("--gbs", type=int, default=8, help="packs per step (full mode)")
    ap.add_argument("--dp", type=int, default=2, help="data-parallel ranks for the balance figure")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "bench_data"))
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_mm_packing.md")
    args = ap.parse_args()
    ds = MMShardDataset(build_demo_data(args.data_dir)["train"])
    backend = "dali-mixed" if args.device == "cuda" else "pillow"
    results = []
    for seq in (256, 1024):
        for ratio in (0.0, 0.4, 1.0):
            shape = f"S={seq} ratio={ratio}"
            q = quality(ds, ratio, seq, args.packs, args.gbs, args.dp)

            def plan(ratio=ratio, seq=seq):
                src = make_source(ds, ratio, seq, args.packs, backend)
                for p in range(args.packs):
                    src.pack_at(p)
            r = harness.measure("mm_packing", "ours", "plan", shape, plan, warmup=1, repeats=args.repeats)
            r.ms = round(r.ms / args.packs, 4)  # per pack
            r.extra.update(q)
            results.append(r)
            src = make_source(ds, ratio, seq, args.packs, backend)
            out_bytes = sum(s.visual * 4 * 1176 * 4 for p in src.step_packs(args.gbs) for s in p)  # fp32 pixels out
            sl = StepSlice(0, 1, args.gbs, 1, seq)
            step = lambda src=src, sl=sl: list(src.micro_batches(sl))  # noqa: E731  the trainer's path
            r = harness.measure("mm_packing", f"ours ({backend})", "full", shape + f" gbs={args.gbs}", step,
                                device=args.device, warmup=1, repeats=args.repeats, bytes_moved=out_bytes or None)
            r.extra["packs/s"] = round(args.gbs / (r.ms * 1e-3), 1)
            r.extra["cpu_ms"] = round(harness.cpu_ms(step, args.repeats), 1)
            results.append(r)
    notes = ("- plan: ms per pack (sizes only); full: ms per step of gbs packs (read + decode + resize + pack_images) "
             "through micro_batches (the trainer's path); cpu_ms: process CPU time of that step.\n"
             "- efficiency = non-pad positions / capacity over the planned packs; dp_imbalance = mean over steps of "
             "(max - min) / max visual tokens over the dp ranks; mm_share = image-text positions / non-pad positions.\n"
             "- Text: pydoc topics cut into pack-length pieces (DemoTextDocs, as build_source does); "
             "pack_window 256 samples for every S; each window's least-filled pack is carried into the next.\n"
             f"- load average while measuring (shared 2-core machine): {os.getloadavg()[0]:.1f}")
    harness.emit(results, title="multimodal sequence packing (demo data)",
                 out=harness.results_path("mm_packing") if args.out else None, notes=notes)


if __name__ == "__main__":
    main()
