"""Import / export throughput and peak memory on a ~1B-parameter random-weight Llama-style model in bf16, against a
plain safetensors read of the same files.

The model's safetensors shards (~0.5 GB each) and config.json are written here without transformers' model class
(random bf16 tensors, streamed shard by shard). Each measured phase runs in its own process, so its peak RSS
(ru_maxrss from wait4) is its own; the page cache is warm for every phase (one untimed read first), so the numbers
compare the conversions' CPU and memory work, not the disk. Before each phase (untimed) the previous output is
deleted and `os.sync()` flushes dirty pages, so no phase pays for another's writeback or for deleting old files.

    python benchmarks/interop/bench_interop.py [--out] [--dir /tmp/omni_bench_interop] [--layers 18]

Goals: peak RSS <= largest shard + 1 GB; MB/s >= 60% of the plain read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SHARD = 512 * 2**20
# ~1.0B parameters: 18 x (attention 2048 x (2048 + 2 x 1024) + 2048^2, SwiGLU 3 x 2048 x 5632) + 2 x 32000 x 2048
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "hidden_act": "silu", "torch_dtype": "bfloat16"}


def build(d: str, layers: int) -> None:
    import torch

    from omni_mega.interop.hf_io import ShardWriter

    cfg = {**CONFIG, "num_hidden_layers": layers}
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                   (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                   (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                   (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                   (p + "mlp.down_proj.weight", (h, f))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    w = ShardWriter(d, [(n, torch.bfloat16, s) for n, s in shapes], SHARD)
    g = torch.Generator().manual_seed(0)
    for n, s in shapes:
        w.add(n, (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16))
    w.close()
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def phase(name: str, d: str) -> None:
    """One measured phase in this process; prints {seconds, bytes, base_rss_mb} as JSON."""
    import torch  # noqa: F401  (its import is part of every phase's baseline)

    from omni_mega.interop.convert import export_hf, import_hf  # imports (DCP, ...) happen before the clock starts
    from omni_mega.interop.hf_io import HFCheckpoint

    for prev in ("ckpt", "exported"):  # the previous run's output: deleting it is not part of the conversion
        if name == {"ckpt": "import", "exported": "export"}[prev]:
            shutil.rmtree(os.path.join(d, prev), ignore_errors=True)
    os.sync()  # every phase starts without dirty pages (the kernel throttles writers past its dirty-page limit)
    base = rss_mb()
    t0 = time.perf_counter()
    if name.startswith("read"):
        ck = HFCheckpoint(os.path.join(d, "hf" if name == "read" else "exported"))
        nbytes = sum(_touch(ck.get(key)) for key in ck.names())
    elif name == "import":
        nbytes = import_hf(os.path.join(d, "hf"), os.path.join(d, "ckpt"), overwrite=True)["bytes"]
    else:
        nbytes = export_hf(os.path.join(d, "ckpt"), os.path.join(d, "exported"), overwrite=True,
                           max_shard_bytes=SHARD)["bytes"]
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": nbytes, "base_rss_mb": base}))


def _touch(t) -> int:
    """Copies the tensor out of the mapped file (safe_open's tensors may still point into the mapping, then nothing
    has been read yet), as loading it into a model would."""
    return t.clone().numel() * t.element_size()


def run_phase(name: str, d: str) -> dict:
    p = subprocess.Popen([sys.executable, __file__, "--phase", name, "--dir", d], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ROOT})
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise RuntimeError(f"phase {name} failed ({status})")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/omni_bench_interop")
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--out", action="store_true")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return phase(args.phase, args.dir)
    from benchmarks.harness import Result, emit, results_path

    hf = os.path.join(args.dir, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        build(hf, args.layers)
    files = [os.path.join(hf, n) for n in os.listdir(hf) if n.endswith(".safetensors")]
    largest = max(os.path.getsize(f) for f in files) / 2**20
    load = os.getloadavg()[0]
    run_phase("read", args.dir)  # warms the page cache
    rows = {name: run_phase(name, args.dir) for name in ("read", "import", "export", "read-exported")}
    base = rows["read"]["seconds"]
    results = []
    for name, r in rows.items():
        mbs = r["bytes"] / 2**20 / r["seconds"]
        results.append(Result(name, "omni_mega" if name in ("import", "export") else "safetensors safe_open",
                              "bf16", f"{r['bytes'] / 1e9:.2f} GB", r["seconds"] * 1e3, r["peak_rss_mb"],
                              {"MB/s": round(mbs), "% of plain read": round(100 * base / r["seconds"]),
                               "RSS before work MB": round(r["base_rss_mb"])}))
    params = rows["import"]["bytes"] / 2 / 1e9
    notes = (f"{params:.2f}B-parameter Llama-style model ({args.layers} layers, width 2048, vocab 32000), random bf16 "
             f"weights in {len(files)} safetensors shards (largest {largest:.0f} MiB). Each phase in its own process "
             f"(peak MB = its ru_maxrss, which includes the interpreter and torch: see 'RSS before work'); page cache "
             f"warm; before each phase (untimed) the previous output is deleted and os.sync() run. Goals: peak <= largest shard + 1 GB = {largest + 1024:.0f} MB; import/export MB/s >= 60% of the "
             f"plain read. OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average (1 min) "
             f"before: {load:.2f}, after: {os.getloadavg()[0]:.2f}.")
    emit(results, title="HF import / export vs plain safetensors read", notes=notes,
         out=results_path("interop") if args.out else None)


if __name__ == "__main__":
    main()
