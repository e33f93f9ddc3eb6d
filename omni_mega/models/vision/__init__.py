"""Vision side of the omni model: native-resolution ViT, LLaVA projector, Ovis visual tokenizer (head + VET)."""

from omni_mega.models.vision.attention import (
    PackedCoreAttention, VisionPackedSeqParams, block_spec, layer_spec, packed_attention,
)
from omni_mega.models.vision.merge import check_placeholders, merged_tokens_per_image, spatial_merge
from omni_mega.models.vision.norms import SPNorm
from omni_mega.models.vision.projector import Projector
from omni_mega.models.vision.visual_tokenizer import VisualTokenizer
from omni_mega.models.vision.vit import VisionTransformer, vit_transformer_config

__all__ = [
    "PackedCoreAttention", "Projector", "SPNorm", "VisionPackedSeqParams", "VisionTransformer", "VisualTokenizer",
    "block_spec", "check_placeholders", "layer_spec", "merged_tokens_per_image", "packed_attention",
    "spatial_merge", "vit_transformer_config",
]
