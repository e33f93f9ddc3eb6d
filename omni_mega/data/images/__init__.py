"""Images: encoded bytes -> uint8 RGB at Qwen2-VL sizes -> packed patches.

`sizes` (smart_resize and the rejection reasons, pure Python), `pillow` (the Pillow backend and the per-image result
every backend returns), `dali` (the DALI backend, optional), `decode` (the one interface: `decode_images`,
`decode_and_pack`, `DecodeStats`)."""

from omni_mega.data.images.decode import DecodeStats, decode_and_pack, decode_images
from omni_mega.data.images.pillow import MAX_DECODE_PIXELS, decode_one
from omni_mega.data.images.sizes import MAX_PIXELS, MIN_PIXELS, ImageRejected, smart_resize, target_size

__all__ = ["DecodeStats", "ImageRejected", "MAX_DECODE_PIXELS", "MAX_PIXELS", "MIN_PIXELS", "decode_and_pack",
           "decode_images", "decode_one", "smart_resize", "target_size"]
