"""omni_mega's ops: each has a plain-PyTorch reference (`<op>_ref`) and the fastest kernel for the input's device."""

from omni_mega.ops._ext import has_cpu_extension, has_cuda_extension
from omni_mega.ops.vision_positions import vision_positions, vision_positions_ref

# [rope_2d imports]
# [vet imports]
# [pack_images imports]

__all__ = ["has_cpu_extension", "has_cuda_extension", "vision_positions", "vision_positions_ref"]
