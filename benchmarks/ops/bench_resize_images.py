"""resize_images: Pillow-exact BICUBIC resize of a batch of uint8 RGB images to their Qwen2-VL (smart_resize) sizes.

Providers: the C++ CPU kernel (one batched call, threads over images and rows) and Pillow's Image.resize called
once per image (what omni_mega.data.images.decode does without the extension, and what transformers' processor does).
The inputs are N random RGB images with sides uniform in 200..1600 px, each resized to
`smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS)`. Bytes moved = uint8 input read + uint8 output written once.
There is no CUDA kernel (the GPU decode path resizes with torch's bicubic interpolate), so this benchmark has no
GPU rows.

    .venv/bin/python benchmarks/ops/bench_resize_images.py [--out] [--images 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import harness  # noqa: E402
from omni_mega.data.images import MAX_PIXELS, MIN_PIXELS, smart_resize  # noqa: E402
from omni_mega.ops import has_cpu_extension, resize_images  # noqa: E402


def make_images(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """n uint8 [H, W, 3] images with sides uniform in 200..1600 px, and their (h, w) smart_resize targets."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.randint(200, 1601, (n, 2), generator=g).tolist()
    images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in sides]
    targets = [smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS) for h, w in sides]
    return images, targets


def pillow_provider(images: list[torch.Tensor], targets: list[tuple[int, int]]):
    """Pillow Image.resize per image, on Image objects made beforehand (decoding hands Pillow images over)."""
    pils = [Image.fromarray(i.numpy(), "RGB") for i in images]
    return lambda: [p.resize((w, h), Image.Resampling.BICUBIC) for p, (h, w) in zip(pils, targets)]


def check_equal_to_pillow(images, targets) -> str:
    """One comparison of the C++ output with Pillow's, image by image: the note that goes with the timings."""
    got = resize_images(images, targets, backend="cpp").images()
    want = pillow_provider(images, targets)()
    bad = [(tuple(i.shape[:2]), t) for i, t, a, b in zip(images, targets, got, want)
           if not torch.equal(a, torch.from_numpy(np.array(b)))]
    if bad:
        return f"MISMATCH with Pillow on {len(bad)}/{len(images)} images, (h, w) -> target: {bad[:5]}"
    return f"cpp output equals Pillow's bit for bit on all {len(images)} images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_resize_images.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not has_cpu_extension():
        sys.exit("bench_resize_images: needs the C++ extension (make build)")
    load0 = os.getloadavg()[0]
    images, targets = make_images(args.images)
    in_bytes = sum(i.numel() for i in images)
    out_px = sum(h * w for h, w in targets)
    note = check_equal_to_pillow(images, targets)
    print(f"# {note}", file=sys.stderr)
    shape = f"{args.images} imgs, {in_bytes / 3e6:.1f} MP -> {out_px / 1e6:.1f} MP"
    kw = dict(warmup=1, repeats=args.repeats, bytes_moved=in_bytes + out_px * 3)
    providers = {
        "cpp": lambda: resize_images(images, targets, backend="cpp"),
        "Pillow Image.resize (per image)": pillow_provider(images, targets),
    }
    results = []
    for name, fn in providers.items():
        r = harness.measure("resize_images", name, "fwd", shape, fn, **kw)
        r.extra["MP/s out"] = round(out_px / 1e6 / (r.ms * 1e-3), 1)
        r.extra["cpu ms"] = round(harness.cpu_ms(fn, args.repeats), 1)  # robust to other jobs on the host
        results.append(r)
    pil = results[-1]
    for r in results:  # >1: faster than Pillow; the cpu-time ratio is the one to trust on a shared machine
        r.extra["x Pillow"] = round(pil.ms / r.ms, 2)
        r.extra["x Pillow (cpu)"] = round(pil.extra["cpu ms"] / r.extra["cpu ms"], 2)
    notes = (f"{note}. Input {in_bytes / 1e6:.1f} MB uint8 RGB (sides uniform in 200..1600), output "
             f"{out_px * 3 / 1e6:.1f} MB at smart_resize sizes (factor 28, min_pixels {MIN_PIXELS}, max_pixels "
             f"{MAX_PIXELS}). CPU threads: {torch.get_num_threads()} (Pillow's resize is single-threaded); load "
             f"average {load0:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs share the CPU when above 0). "
             "No GPU rows: resize_images has no CUDA kernel (the GPU decode path resizes with torch's bicubic "
             "interpolate).")
    out = harness.results_path("resize_images") if args.out else None
    harness.emit(results, title="resize_images (Pillow-exact BICUBIC, batched)", out=out, notes=notes)


if __name__ == "__main__":
    main()
