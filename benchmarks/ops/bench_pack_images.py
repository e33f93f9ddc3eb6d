"""pack_images: normalize + patchify uint8 images already at Qwen2-VL sizes into pixel_values [T, 1176].

Providers: reference eager (plain PyTorch, float64 then rounded), the C++ CPU kernel (at::parallel_for over
merge-block rows), the CUDA kernel when a GPU is present (CUDA events, % of HBM roofline), and transformers'
Qwen2VLImageProcessorPil with resizing off (rescale + normalize + patchify in numpy) when transformers is installed.
Bytes moved = uint8 input + out_dtype output (written once).

    .venv/bin/python benchmarks/ops/bench_pack_images.py [--out] [--images 16] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import sys

if "--thp" in sys.argv:  # read once by torch's CPU allocator: must be set before torch allocates anything
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import harness  # noqa: E402
from omni_mega.ops import pack_images, pack_images_ref  # noqa: E402


def make_images(n: int, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """n uint8 HWC RGB images, sides uniform in 224..1008 px, multiples of 28 (what smart_resize produces)."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.randint(8, 37, (n, 2), generator=g) * 28
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).to(device) for h, w in sides.tolist()]


def transformers_provider(images: list[torch.Tensor]):
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except Exception as e:
        print(f"# transformers provider skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    proc = Qwen2VLImageProcessorPil(do_resize=False)
    arrays = [i.numpy() for i in images]
    return lambda: proc(images=arrays, return_tensors="np", input_data_format="channels_last")["pixel_values"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=1: torch's large CPU allocations use "
                    "transparent huge pages (fewer page faults when the output is first written)")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_pack_images.md")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    load0 = os.getloadavg()[0]
    images = make_images(args.images)
    tokens = sum(i.shape[0] * i.shape[1] for i in images) // 14**2
    in_bytes = sum(i.numel() for i in images)
    bytes_moved = in_bytes + tokens * 1176 * torch.empty((), dtype=dtype).element_size()
    shape = f"{args.images} imgs, {tokens} tokens, {args.dtype}"
    kw = dict(warmup=1, repeats=args.repeats, bytes_moved=bytes_moved)
    results = []
    providers = {
        "ref eager": lambda: pack_images_ref(images, out_dtype=dtype),
        "cpp": lambda: pack_images(images, out_dtype=dtype, backend="cpp"),
    }
    tf = transformers_provider(images) if dtype == torch.float32 else None
    if tf is not None:
        providers["transformers Qwen2VLImageProcessorPil (no resize)"] = tf
        ours = pack_images(images, backend="cpp").pixel_values
        diff = (ours - torch.from_numpy(tf())).abs().max().item()
        print(f"# transformers vs cpp max abs diff: {diff:.2e}", file=sys.stderr)
    for name, fn in providers.items():
        r = harness.measure("pack_images", name, "fwd", shape, fn, **kw)
        r.extra["img/s"] = round(args.images / (r.ms * 1e-3), 1)
        r.extra["cpu ms"] = round(harness.cpu_ms(fn, args.repeats), 1)  # robust to other jobs on the host
        results.append(r)
    if torch.cuda.is_available():
        gpu_images = [i.cuda() for i in images]
        r = harness.measure("pack_images", "cuda", "fwd", shape,
                            lambda: pack_images(gpu_images, out_dtype=dtype, backend="cuda"), device="cuda", **kw)
        r.extra["img/s"] = round(args.images / (r.ms * 1e-3), 1)
        results.append(r)
    notes = (f"Input {in_bytes / 1e6:.1f} MB uint8, output {tokens} x 1176 {args.dtype}. CPU threads: "
             f"{torch.get_num_threads()}; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs "
             "share the CPU when above 0). GPU rows appear only when run on a GPU. peak MB is RSS growth in one call: "
             "the C++ output comes from the recycled host pool (csrc/common/host_cache.h), resident after the first "
             "call, so it shows ~0; a first call pays page faults on a fresh output (250-290 ms per 485 MB measured).")
    out = harness.results_path("pack_images" + ("_thp" if args.thp else "")) if args.out else None
    harness.emit(results, title="pack_images (normalize + patchify)", out=out, notes=notes)


if __name__ == "__main__":
    main()
