"""omni_mega's ops: each has a plain-PyTorch reference (`<op>_ref`) and the fastest kernel for the input's device."""

from omni_mega.ops._ext import has_cpu_extension, has_cuda_extension
from omni_mega.ops.vision_positions import vision_positions, vision_positions_ref

# [rope_2d imports]
# [vet imports]
# [pack_images imports]
from omni_mega.ops.pack_images import PackedImages, pack_images, pack_images_ref

__all__ = [
    "has_cpu_extension", "has_cuda_extension",
    "vision_positions", "vision_positions_ref",
    "PackedImages", "pack_images", "pack_images_ref",
]
