"""The registry: Hugging Face architecture name -> family, and the family that expresses a model trained here."""

from __future__ import annotations

from dataclasses import dataclass

from omni_mega.config import ConnectorConfig, ModelConfig
from omni_mega.interop.arch.base import Stack, need, text_fields
from omni_mega.interop.arch.clip import ClipFamily
from omni_mega.interop.arch.decoder import rope_to_hf, decoder_hf, decoder_llm, decoder_stack, mrope_decoder
from omni_mega.interop.arch.qwen25vl import Qwen25VLFamily, check_qwen25vl
from omni_mega.interop.arch.qwen2vl import check_qwen2vl_vision, qwen2vl_vision, qwen2vl_vision_hf, qwen2vl_vision_stack
from omni_mega.interop.arch.llava import LlavaFamily, check_llava
from omni_mega.interop.arch.siglip import SiglipFamily
from omni_mega.interop.arch.siglip2 import Siglip2Family
from omni_mega.interop.errors import InteropError


@dataclass(frozen=True)
class Family:
    architecture: str  # HF class name
    model_type: str
    qkv_bias: bool
    qk_norm: bool
    vision: bool = False
    vision_only = False
    ignored_prefixes: tuple[str, ...] = ()

    def to_config(self, hf: dict) -> ModelConfig:
        text = text_fields(hf)
        if not self.vision:
            return ModelConfig(llm=decoder_llm(text, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
                                               arch=self.architecture))
        llm = mrope_decoder(text, self.architecture)
        vit, conn = qwen2vl_vision(need(hf, "vision_config"), llm.hidden_size)
        conn.image_token_id = int(need(hf, "image_token_id"))
        return ModelConfig(llm=llm, vit=vit, connector=conn)

    def stacks(self, cfg: ModelConfig, padded_vocab: int) -> list[Stack]:
        if not self.vision:
            return [decoder_stack(cfg, padded_vocab, ("model.",))]
        return [decoder_stack(cfg, padded_vocab, ("model.", "model.language_model."), "llm."),
                qwen2vl_vision_stack(cfg, ("visual.", "model.visual."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int, dtype: str, base: dict | None) -> dict:
        text = decoder_hf(cfg.llm, vocab)
        if self.model_type in ("llama", "mistral"):
            text["attention_bias"] = False
            text["mlp_bias"] = False
        if self.model_type == "qwen3":
            text["attention_bias"] = False
        if self.model_type in ("qwen2", "qwen3", "mistral"):
            text.setdefault("sliding_window", None)
            text["use_sliding_window"] = False
        base = base or {}
        out = {k: v for k, v in base.items() if k not in ("rope_parameters", "text_config")}
        # transformers v5 nests a VLM's text fields (token ids, ...); the flat layout below is what releases carry
        out.update({k: v for k, v in (base.get("text_config") or {}).items()
                    if k not in ("rope_parameters", "model_type", "architectures")})
        if self.vision:
            check_qwen2vl_vision(cfg)
            text.update(rope_to_hf(cfg.llm, cfg.llm.mrope_section))
            out.update(text)
            out["vision_config"] = {**base.get("vision_config", {}), **qwen2vl_vision_hf(cfg.vit,
                                                                                               cfg.llm.hidden_size)}
            img = (cfg.connector or ConnectorConfig()).image_token_id
            if not 0 <= img < vocab:
                raise InteropError(f"model.connector.image_token_id {img} is not a token of the {vocab}-token "
                                   "vocabulary; Qwen2-VL needs a real image token id")
            out["image_token_id"] = img
        else:
            out.update(text)
        out.update({"architectures": [self.architecture], "model_type": self.model_type, "dtype": dtype})
        return out


FAMILIES = {f.architecture: f for f in (
    Family("LlamaForCausalLM", "llama", qkv_bias=False, qk_norm=False),
    Family("MistralForCausalLM", "mistral", qkv_bias=False, qk_norm=False),
    Family("Qwen2ForCausalLM", "qwen2", qkv_bias=True, qk_norm=False),
    Family("Qwen3ForCausalLM", "qwen3", qkv_bias=False, qk_norm=True),
    Family("Qwen2VLForConditionalGeneration", "qwen2_vl", qkv_bias=True, qk_norm=False, vision=True),
    Qwen25VLFamily(),
    SiglipFamily("SiglipVisionModel", "siglip_vision_model"),
    SiglipFamily("SiglipModel", "siglip"),  # its vision tower (the text tower is not imported)
    ClipFamily("CLIPVisionModel", "clip_vision_model"),
    ClipFamily("CLIPModel", "clip"),  # its vision tower (the text tower is not imported)
    LlavaFamily(),
    Siglip2Family("Siglip2VisionModel", "siglip2_vision_model"),  # NaFlex
    Siglip2Family("Siglip2Model", "siglip2"),  # its vision tower
)}


def family_of(hf: dict) -> Family:
    archs = hf.get("architectures") or []
    for a in archs:
        if a in FAMILIES:
            return FAMILIES[a]
    raise InteropError(f"config.json: architecture {archs or hf.get('model_type')!r} is not supported; supported: "
                       + ", ".join(FAMILIES))


def family_for(cfg: ModelConfig) -> Family:
    """The HF architecture that expresses a model trained here (no HF origin recorded)."""
    llm = cfg.llm
    if getattr(llm, "num_moe_experts", None) is not None or getattr(llm, "multi_latent_attention", False):
        raise InteropError("export of mixture-of-experts or multi-latent-attention language models (DeepSeek-V3 / "
                           "Moonlight layout) is not supported yet")
    if llm.normalization != "RMSNorm" or llm.activation != "swiglu":
        raise InteropError("no supported Hugging Face architecture has this language model: export needs RMSNorm and "
                           f"SwiGLU, the model has {llm.normalization} and {llm.activation}")
    if cfg.vit is not None and cfg.vit.class_token:  # a CLIP-style tower: LLaVA
        check_llava(cfg)
        return FAMILIES["LlavaForConditionalGeneration"]
    if cfg.vit is not None and cfg.vit.normalization == "RMSNorm":  # Qwen2-VL's tower has LayerNorm, Qwen2.5-VL's not
        check_qwen25vl(cfg)
        return FAMILIES["Qwen2_5_VLForConditionalGeneration"]
    if cfg.vit is not None:
        fam = FAMILIES["Qwen2VLForConditionalGeneration"]
        check_qwen2vl_vision(cfg)
        if not llm.add_qkv_bias or llm.qk_layernorm:
            raise InteropError("Qwen2VLForConditionalGeneration needs model.llm.add_qkv_bias=true and no qk_layernorm")
        return fam
    if llm.qk_layernorm:
        if llm.add_qkv_bias:
            raise InteropError("no supported architecture has both q/k/v biases and q/k norms")
        return FAMILIES["Qwen3ForCausalLM"]
    return FAMILIES["Qwen2ForCausalLM" if llm.add_qkv_bias else "LlamaForCausalLM"]
