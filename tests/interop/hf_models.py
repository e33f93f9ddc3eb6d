"""Tiny random Hugging Face models for the interop tests, built in the test (nothing downloaded). Every bias and norm
gain is re-drawn at random (transformers initialises gains to 1 and biases to 0, which would hide a dropped or
misplaced term), and the model is saved with save_pretrained (safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 250  # not a multiple of 128: the import pads the vocabulary
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 240, 241, 242, 243
PATCH, MERGE, TPS = 2, 2, 2
CLIP_IMAGE = 8  # LLaVA's CLIP tower: 8x8 images of 2x2 patches, a 4x4 grid (16 image tokens without the class token)
# The test image of each vision-language architecture, (t, h, w) in patches. Qwen2.5-VL's 6 x 8 patches are 3 x 4
# merged tokens: four windows of 2 x 2 merged tokens (8 pixels), two of them cut short by the image's edge.
VL_GRIDS = {"Qwen2VLForConditionalGeneration": (1, 4, 6), "Qwen2_5_VLForConditionalGeneration": (1, 6, 8)}


def _text(**kw) -> dict:
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-6,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {**base, **kw}


def build(arch: str):
    """(HF model in eval mode, fp32, gains and biases re-drawn) for one of the supported architectures."""
    import transformers as tf

    torch.manual_seed(hash(arch) % 1000)
    if arch == "LlamaForCausalLM":  # llama3 RoPE scaling with a small original context so it bites
        cfg = tf.LlamaConfig(**_text(rope_theta=50000.0, rope_scaling={
            "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}))
    elif arch == "MistralForCausalLM":  # tied embeddings, fractional theta
        cfg = tf.MistralConfig(**_text(tie_word_embeddings=True, rope_theta=12345.5, sliding_window=None))
    elif arch == "Qwen2ForCausalLM":  # q/k/v biases
        cfg = tf.Qwen2Config(**_text(rope_theta=1e6))
    elif arch == "Qwen3ForCausalLM":  # own head dim, q/k norms, yarn
        cfg = tf.Qwen3Config(**_text(head_dim=24, rope_theta=1e6, rope_scaling={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}))
    elif arch == "Qwen2VLForConditionalGeneration":
        cfg = tf.Qwen2VLConfig(
            text_config=_text(rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=PATCH,
                               temporal_patch_size=TPS, spatial_merge_size=MERGE),
            image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END)
    elif arch == "LlavaForConditionalGeneration":  # features of the last-but-one CLIP layer, class token dropped
        cfg = tf.LlavaConfig(text_config={**_text(rope_theta=1e4), "model_type": "llama"}, vision_config=_clip(),
                             image_token_index=IMAGE_TOKEN, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_seq_length=(CLIP_IMAGE // PATCH) ** 2)
    elif arch == "Qwen2_5_VLForConditionalGeneration":  # layer 0 attends within windows, layer 1 the whole image
        cfg = tf.Qwen2_5_VLConfig(
            text_config=_text(rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                               patch_size=PATCH, temporal_patch_size=TPS, spatial_merge_size=MERGE,
                               window_size=2 * PATCH * MERGE, fullatt_block_indexes=[1]),
            image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END)
    else:
        raise ValueError(arch)
    model = getattr(tf, arch)(cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm gains around 1, biases around 0
                gain = "norm" in name or "ln_" in name
                p.copy_((1.0 if gain and name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    return model


def _clip(**kw) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": CLIP_IMAGE, "patch_size": PATCH, "projection_dim": 16, "hidden_act": "quick_gelu", **kw}


def save(arch: str, out: Path, *, max_shard_size: str | None = None):
    model = build(arch)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kw)
    return model


def image_inputs(seed: int = 0, grid=(1, 4, 6)):
    """(pixel_values [T, C*tps*p*p], grid_thw [1, 3]) of one random image in Qwen2-VL's packed layout."""
    t, h, w = grid
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(t * h * w, 3 * TPS * PATCH * PATCH, generator=g)
    return pv, torch.tensor([list(grid)])


def vl_prompt(grid=(1, 4, 6), text_before=(5, 6), text_after=(7, 8, 9)) -> list[int]:
    t, h, w = grid
    n = t * h * w // MERGE**2
    return [*text_before, VISION_START, *[IMAGE_TOKEN] * n, VISION_END, *text_after]


def hf_vl_kwargs(ids: torch.Tensor, pv: torch.Tensor, grid: torch.Tensor) -> dict:
    """transformers v5 Qwen2-VL inputs: the processor's mm_token_type_ids (1 at image tokens) drive its M-RoPE index."""
    return {"input_ids": ids, "pixel_values": pv, "image_grid_thw": grid,
            "mm_token_type_ids": (ids == IMAGE_TOKEN).int()}


def _redraw_vectors(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0)
                        + 0.2 * torch.randn(p.shape, generator=g))


def build_siglip(out: Path):
    """A tiny SiglipVisionModel (16x16 images, 4x4 patches), gains and biases re-drawn, saved; returns the model."""
    import transformers as tf

    torch.manual_seed(11)
    cfg = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=16, patch_size=4)
    model = tf.SiglipVisionModel(cfg).eval()
    _redraw_vectors(model, 8)
    model.save_pretrained(out)
    return model


def patches_row_major(image: torch.Tensor, p: int) -> torch.Tensor:
    """[1, C, H, W] -> [H/p * W/p, C*p*p], patches row by row, each flattened in (C, p, p) order."""
    _, c, h, w = image.shape
    x = image[0].reshape(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4)
    return x.reshape((h // p) * (w // p), c * p * p)


def patches_channels_last(image: torch.Tensor, p: int) -> torch.Tensor:
    """[1, C, H, W] -> [H/p * W/p, p*p*C], patches row by row, each flattened in (p, p, C) order (SigLIP2's
    NaFlex processor)."""
    _, c, h, w = image.shape
    x = image[0].reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return x.reshape((h // p) * (w // p), p * p * c)


def build_clip(out: Path, arch: str = "CLIPVisionModel"):
    """A tiny CLIPVisionModel or CLIPModel (8x8 images, 2x2 patches), gains and biases re-drawn, saved."""
    import transformers as tf

    torch.manual_seed(12)
    if arch == "CLIPModel":
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        model = tf.CLIPModel(tf.CLIPConfig(vision_config=_clip(), text_config=text, projection_dim=16)).eval()
    else:
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**_clip())).eval()
    _redraw_vectors(model, 9)
    model.save_pretrained(out)
    return model


SIGLIP2_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4,
                      num_patches=16)  # a 4x4 position table


def build_siglip2(out: Path, *, full: bool = False):
    """A tiny Siglip2VisionModel (or, `full`, a Siglip2Model with a tiny text tower), gains and biases re-drawn,
    saved; returns the model."""
    import transformers as tf

    torch.manual_seed(12)
    if full:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                    max_position_embeddings=16, projection_size=32, pad_token_id=1, bos_token_id=2, eos_token_id=3)
        model = tf.Siglip2Model(tf.Siglip2Config(text_config=text, vision_config=SIGLIP2_VISION)).eval()
    else:
        model = tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**SIGLIP2_VISION)).eval()
    _redraw_vectors(model, 9)
    model.save_pretrained(out)
    return model


def vl_case(arch: str, seed: int = 0):
    """(input_ids [1, s], our pixel_values, grid_thw, transformers' kwargs) of a prompt with one image."""
    if arch == "LlavaForConditionalGeneration":
        image = torch.randn(1, 3, CLIP_IMAGE, CLIP_IMAGE, generator=torch.Generator().manual_seed(seed))
        n = CLIP_IMAGE // PATCH
        ids = torch.tensor([[1, 5, 6, *[IMAGE_TOKEN] * (n * n), 7, 8, 9]])
        return ids, patches_row_major(image, PATCH), torch.tensor([[1, n, n]]), {"input_ids": ids,
                                                                                   "pixel_values": image}
    pv, grid = image_inputs(seed, grid=VL_GRIDS[arch])
    ids = torch.tensor([vl_prompt(VL_GRIDS[arch])])
    return ids, pv, grid, hf_vl_kwargs(ids, pv, grid)
