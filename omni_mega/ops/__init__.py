"""omni_mega's ops: each has a plain-PyTorch reference (`<op>_ref`) and the fastest kernel for the input's device."""

from omni_mega.ops._ext import has_cpu_extension, has_cuda_extension
from omni_mega.ops.vision_positions import vision_positions, vision_positions_ref

# [rope_2d imports]
from omni_mega.ops.rope_2d import rope_2d, rope_2d_qk, rope_2d_ref
# [vet imports]
from omni_mega.ops.vet import vet_embed, vet_embed_ref, vet_indicator, visual_head_vet, visual_head_vet_ref
# [pack_images imports]
from omni_mega.ops.pack_images import PackedImages, pack_images, pack_images_ref
# [resize_images imports]
from omni_mega.ops.resize_images import ResizedImages, resize_images, resize_images_ref

__all__ = [
    "has_cpu_extension", "has_cuda_extension",
    "vision_positions", "vision_positions_ref",
    "rope_2d", "rope_2d_qk", "rope_2d_ref",
    "vet_embed", "vet_embed_ref", "vet_indicator", "visual_head_vet", "visual_head_vet_ref",
    "PackedImages", "pack_images", "pack_images_ref",
    "ResizedImages", "resize_images", "resize_images_ref",
]
