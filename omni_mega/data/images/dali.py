"""DALI decoding for `omni_mega.data.images.decode_images` (optional: `pip install omni_mega[dali]`).

`fn.external_source` -> `fn.decoders.image(device="cpu")` (with `device_id=None`, no GPU needed) or
`device="mixed"` (nvJPEG on the GPU). Only plain 8-bit RGB/gray JPEG and PNG go through DALI, where its decode is
bit-exact with Pillow's; other modes (CMYK, RGBA, 16-bit, palette, ...) and anything DALI fails on take the Pillow
path, which converts them or names the rejection reason, so a bad image in a DALI batch never loses the batch.
After decoding, the CPU path resizes like the Pillow path (one batched C++ resize, or Pillow: the same pixels);
the mixed path resizes on the GPU with torch's antialiased bicubic, which is close to but not bit-exact with
Pillow's.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from omni_mega.data.images.pillow import Decoded, decode_one, deferred_resize, is_16bit, open_image, resize_to_factor
from omni_mega.data.images.sizes import ImageRejected, target_size

log = logging.getLogger(__name__)

DALI_FORMATS = ("JPEG", "PNG")
DALI_MODES = ("RGB", "L")  # DALI's RGB output equals Pillow's convert("RGB") for these (measured: max diff 0)
# Building a pipeline costs ~0.1 s: one per (process, device, threads, batch, device_id). The pid keeps a forked
# data-loader worker from reusing its parent's pipeline; the lock keeps two threads from interleaving feed/run.
_PIPES: dict[tuple, object] = {}
_LOCK = threading.Lock()


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # not installed, or a broken CUDA install: DALI is optional
        return False
    return True


def _pipeline(device: str, num_threads: int, batch_size: int):
    device_id = torch.cuda.current_device() if device == "mixed" else None
    key = (os.getpid(), device, num_threads, batch_size, device_id)
    if key not in _PIPES:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def
        def decode_pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, batch=True)
            # Pillow (and so transformers) ignores EXIF orientation; DALI applies it by default.
            return fn.decoders.image(encoded, device=device, output_type=types.RGB, adjust_orientation=False)

        pipe = decode_pipe(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                           prefetch_queue_depth=1)
        pipe.build()
        _PIPES[key] = pipe
    return _PIPES[key]


def _run(pipe, encoded: list[bytes], device: str) -> list:
    """One DALI batch -> list of uint8 HWC arrays (numpy on CPU, torch CUDA tensors for mixed)."""
    with _LOCK:
        pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in encoded])
        (out,) = pipe.run()
        if device == "cpu":
            # Copies: DALI reuses its output buffers on the next run.
            return [np.array(out.at(i)) for i in range(len(encoded))]
        from nvidia.dali.plugin.pytorch import feed_ndarray

        stream = torch.cuda.current_stream()
        arrays = []
        for i in range(len(encoded)):
            t = torch.empty(out[i].shape(), dtype=torch.uint8, device="cuda")
            feed_ndarray(out[i], t, cuda_stream=stream)
            arrays.append(t)
        return arrays


def _dali_eligible(img: Image.Image) -> bool:
    if img.format not in DALI_FORMATS or img.mode not in DALI_MODES or "transparency" in img.info:
        return False
    # 16-bit PNGs: Pillow keeps the high byte, DALI may round; leave them to Pillow so both paths agree.
    return not is_16bit(img)


def _resize_cuda(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8 [H, W, 3] CUDA -> uint8 [h, w, 3]: bicubic with antialiasing, rounded and clamped."""
    x = img.permute(2, 0, 1).unsqueeze(0).float()
    y = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def _finish(arr, mode: str, factor: int, min_pixels: int, max_pixels: int, resize: bool = True) -> Decoded:
    converted_from = None if mode == "RGB" else mode
    try:
        if not resize and not isinstance(arr, torch.Tensor):  # the caller resizes the whole batch at once
            return deferred_resize(arr, converted_from, factor, min_pixels, max_pixels)
        if isinstance(arr, torch.Tensor):  # mixed: resize on the GPU
            h, w = arr.shape[:2]
            nh, nw, scale = target_size(h, w, factor, min_pixels, max_pixels)
            out = arr if (nh, nw) == (h, w) else _resize_cuda(arr, nh, nw)
            return Decoded(out, None, converted_from, scale)
        rgb, scale = resize_to_factor(Image.fromarray(arr, "RGB"), factor, min_pixels, max_pixels)
        return Decoded(torch.from_numpy(np.array(rgb)), None, converted_from, scale)
    except ImageRejected as e:
        return Decoded(None, e)


def decode_with_dali(samples: Sequence[bytes], *, device: str, num_threads: int, factor: int, min_pixels: int,
                     max_pixels: int, max_decode_pixels: int, batch_size: int = 64,
                     resize: bool = True) -> list[Decoded]:
    """Same contract as the Pillow path of decode_images: one `Decoded` per sample, in order. With resize=False
    the CPU images keep their decoded size and carry their target (see `images.pillow.decode_one`)."""
    if not dali_available():
        raise RuntimeError("decode_images(backend='dali'): nvidia-dali is not installed (pip install omni_mega[dali])")
    kw = dict(factor=factor, min_pixels=min_pixels, max_pixels=max_pixels, max_decode_pixels=max_decode_pixels,
              resize=resize)
    results: list[Decoded | None] = [None] * len(samples)
    eligible: list[tuple[int, str]] = []
    for i, s in enumerate(samples):
        try:
            img = open_image(s, max_decode_pixels)  # header only
        except ImageRejected as e:
            results[i] = Decoded(None, e)
            continue
        if _dali_eligible(img):
            eligible.append((i, img.mode))
        else:
            results[i] = decode_one(s, **kw)
    with _LOCK:
        pipe = _pipeline(device, num_threads, batch_size) if eligible else None
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        for start in range(0, len(eligible), batch_size):
            chunk = eligible[start : start + batch_size]
            try:
                arrays = _run(pipe, [samples[i] for i, _ in chunk], device)
            except Exception as e:  # one corrupt sample fails the whole DALI batch: redo it sample by sample
                log.info("DALI batch of %d failed (%s); decoding it with Pillow", len(chunk), str(e).splitlines()[0])
                for (i, _), r in zip(chunk, pool.map(lambda c: decode_one(samples[c[0]], **kw), chunk)):
                    results[i] = r
                continue
            done = pool.map(lambda a: _finish(a[0], a[1][1], factor, min_pixels, max_pixels, resize),
                            zip(arrays, chunk))
            for (i, _), r in zip(chunk, done):
                results[i] = r
    return results  # type: ignore[return-value]
