"""Architecture families as data: how a Hugging Face config.json becomes our model config (and back), and a table of
megatron checkpoint key <-> Hugging Face tensor names with a named transform per row (`interop.transforms`).

A new architecture is a new table plus its config translation; the converters (`interop.convert`) only walk tables.
Templates: `{i}` is a layer index; HF names are relative to the stack's HF prefix (`model.` for a decoder,
`visual.` for Qwen2-VL's vision tower), except names starting with `@`, which are absolute (`lm_head.weight`).
Megatron keys follow TransformerEngine's layout (input / pre-MLP norms inside linear_qkv / linear_fc1), which our
local spec writes too (`models.vision.attention.layer_spec`), with one key per layer (`training.checkpoint`'s
non-homogeneous layers).
"""

from omni_mega.interop.arch.base import Mapping, Rule, Stack, expand, text_fields
from omni_mega.interop.arch.decoder import decoder_hf, decoder_llm, ffn_width, padded_vocab, rope_of
from omni_mega.interop.arch.families import FAMILIES, Family, family_for, family_of

__all__ = ["FAMILIES", "Family", "Mapping", "Rule", "Stack", "decoder_hf", "decoder_llm", "expand", "family_for",
           "family_of", "ffn_width", "padded_vocab", "rope_of", "text_fields"]
