"""LlavaForConditionalGeneration: a CLIP vision tower read at `vision_feature_layer`, LLaVA's projector (Linear, GELU,
Linear: our `mlp` connector at the LLM width) and a Llama-style decoder; one placeholder token per visual feature,
no spatial merge, plain 1D positions.

Tensor names: transformers 5 holds `model.language_model.*`, `model.vision_tower.*`, `model.multi_modal_projector.*`
and `lm_head.weight` in memory but saves (and released checkpoints carry) `language_model.model.*`,
`language_model.lm_head.weight`, `vision_tower[.vision_model].*` and `multi_modal_projector.*`; import reads any of
them, export writes what transformers saves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omni_mega.config import ConnectorConfig, ModelConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need, text_fields
from omni_mega.interop.arch.clip import check_clip_vision, clip_vision, clip_vision_hf, clip_vision_stack
from omni_mega.interop.arch.decoder import DECODER_RULES, decoder_hf, decoder_llm, decoder_stack
from omni_mega.interop.errors import InteropError

# text model_type -> (q/k/v biases, q/k norms)
TEXT_MODELS = {"llama": (False, False), "mistral": (False, False), "qwen2": (True, False), "qwen3": (False, True)}
PROJECTOR_RULES = (  # dims: E vision width, h the LLM width
    Rule("connector.mlp.linear_fc1.weight", ("linear_1.weight",), ("h,E",)),
    Rule("connector.mlp.linear_fc1.bias", ("linear_1.bias",), ("h",)),
    Rule("connector.mlp.linear_fc2.weight", ("linear_2.weight",), ("h,h",)),
    Rule("connector.mlp.linear_fc2.bias", ("linear_2.bias",), ("h",)),
)
_HEAD = "output_layer.weight"


def _text_kind(text: dict) -> str:
    kind = text.get("model_type", "llama")
    if kind not in TEXT_MODELS:
        raise InteropError(f"config.json: LLaVA with a {kind!r} language model is not supported (supported: "
                           + ", ".join(TEXT_MODELS) + ")")
    return kind


def llava_config(hf: dict) -> ModelConfig:
    text_cfg = hf.get("text_config") or {}
    kind = _text_kind(text_cfg)
    qkv_bias, qk_norm = TEXT_MODELS[kind]
    llm = decoder_llm(text_fields(hf), qkv_bias=qkv_bias, qk_norm=qk_norm, arch=f"LLaVA ({kind})")
    v = need(hf, "vision_config")
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise InteropError(f"config.json: LLaVA with a {v.get('model_type')!r} vision tower is not supported (only "
                           "CLIP's, clip_vision_model)")
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise InteropError(f"config.json: vision_feature_layer {layer!r} (features of several layers concatenated) is "
                           "not supported; one layer only")
    select = hf.get("vision_feature_select_strategy", "default")
    if select not in ("default", "full"):
        raise InteropError(f"config.json: vision_feature_select_strategy {select!r} is not supported (default, full)")
    act = hf.get("projector_hidden_act", "gelu")
    if act != "gelu":  # our projector's activation is exact GELU
        raise InteropError(f"config.json: projector_hidden_act {act!r} is not supported (gelu only)")
    if not hf.get("multimodal_projector_bias", True):
        raise InteropError("config.json: multimodal_projector_bias=false is not supported (the projector has biases)")
    image = hf.get("image_token_id", hf.get("image_token_index"))
    if image is None:
        raise InteropError("config.json: missing 'image_token_index' (or 'image_token_id')")
    try:
        vit = clip_vision(v, feature_layer=int(layer), feature_select=select)
    except ValueError as e:
        raise InteropError(f"config.json: vision_feature_layer: {e}") from None
    return ModelConfig(llm=llm, vit=vit, connector=ConnectorConfig(kind="mlp", image_token_id=int(image)))


def check_llava(cfg: ModelConfig) -> None:
    """Raises InteropError unless the model is expressible as LlavaForConditionalGeneration."""
    conn = cfg.connector or ConnectorConfig()
    problems = check_clip_vision(cfg.vit)
    if conn.kind != "mlp" or (conn.projector_hidden_size or cfg.llm.hidden_size) != cfg.llm.hidden_size:
        problems.append("model.connector must be kind mlp with projector_hidden_size = the LLM width")
    if cfg.llm.mrope_section is not None:
        problems.append("model.llm.mrope_section must be unset (LLaVA uses 1D positions)")
    if problems:
        raise InteropError("this model has no LlavaForConditionalGeneration equivalent: " + "; ".join(problems))


@dataclass(frozen=True)
class LlavaFamily:
    architecture: str = "LlavaForConditionalGeneration"
    model_type: str = "llava"
    vision_only = False
    ignored_prefixes: tuple[str, ...] = ()

    def to_config(self, hf: dict) -> ModelConfig:
        return llava_config(hf)

    def stacks(self, cfg: ModelConfig, padded_vocab: int) -> list[Stack]:
        dec = decoder_stack(cfg, padded_vocab, ("language_model.model.", "model.language_model."), "llm.")
        out = [dataclasses.replace(dec, rules=tuple(r for r in DECODER_RULES if r.mcore != _HEAD))]
        if cfg.llm.untie_embeddings:  # the head sits beside the decoder, under a prefix of its own
            head = tuple(r for r in DECODER_RULES if r.mcore == _HEAD)
            out.append(dataclasses.replace(dec, rules=tuple(dataclasses.replace(r, hf=("lm_head.weight",))
                                                             for r in head), hf_prefixes=("language_model.", "")))
        out.append(clip_vision_stack(cfg, ("vision_tower.", "vision_tower.vision_model.", "model.vision_tower.",
                                           "model.vision_tower.vision_model.")))
        out.append(Stack(PROJECTOR_RULES, ("multi_modal_projector.", "model.multi_modal_projector."), "", 0,
                         transforms={"copy": T.copy()},
                         dims={"E": cfg.vit.hidden_size, "h": cfg.llm.hidden_size}))
        return out

    def to_hf_config(self, cfg: ModelConfig, vocab: int, dtype: str, base: dict | None) -> dict:
        check_llava(cfg)
        base = base or {}
        old_text = base.get("text_config") or {}
        kind = old_text.get("model_type") or ("qwen2" if cfg.llm.add_qkv_bias else
                                              "qwen3" if cfg.llm.qk_layernorm else "llama")
        if TEXT_MODELS[_text_kind({"model_type": kind})] != (cfg.llm.add_qkv_bias, cfg.llm.qk_layernorm):
            raise InteropError(f"a LLaVA {kind} language model has q/k/v biases and q/k norms "
                               f"{TEXT_MODELS[kind]}, the model {(cfg.llm.add_qkv_bias, cfg.llm.qk_layernorm)}")
        text = {**{k: v for k, v in old_text.items() if k != "rope_parameters"}, **decoder_hf(cfg.llm, vocab),
                "model_type": kind}
        if kind in ("llama", "mistral", "qwen3"):
            text["attention_bias"] = False
        if kind == "llama":
            text["mlp_bias"] = False
        vit = cfg.vit
        img = (cfg.connector or ConnectorConfig()).image_token_id
        if not 0 <= img < vocab:
            raise InteropError(f"model.connector.image_token_id {img} is not a token of the {vocab}-token "
                               "vocabulary; LLaVA needs a real image token id")
        out = {k: v for k, v in base.items() if k not in ("text_config", "vision_config", "image_token_id")}
        out.update({
            "text_config": text, "vision_config": {**(base.get("vision_config") or {}), **clip_vision_hf(vit)},
            "vision_feature_layer": vit.feature_layer, "vision_feature_select_strategy": vit.feature_select,
            "projector_hidden_act": "gelu", "multimodal_projector_bias": True, "image_token_index": img,
            "image_seq_length": vit.pos_embed_grid ** 2 + (vit.feature_select == "full"),
            "tie_word_embeddings": not cfg.llm.untie_embeddings,
            "architectures": [self.architecture], "model_type": self.model_type, "dtype": dtype})
        return out
