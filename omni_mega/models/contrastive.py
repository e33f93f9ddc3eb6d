"""The towers of a contrastive + captioning pre-training stage of the ViT (CoCa / SigLIP style; MoonViT's own
pre-training is SigLIP's loss plus a captioning loss from a small text decoder).

Three module groups beside the ViT, built only when `model.contrastive` is set:
- `image_pooler`: the ViT's merged tokens projected to the towers' width, one learned query attending over each
  image's tokens (an attentional pooler), LayerNorm, a linear head to the embedding; the learnable temperature
  (`logit_scale`, its log) and bias (`logit_bias`) live here;
- `text_tower`: a causal transformer over [BOS, caption tokens, CLS] (a learned CLS slot appended after each
  caption, CoCa's); the CLS output, normed and projected, is the text embedding;
- `caption_decoder`: transformer layers with causal self-attention and cross-attention to the projected image
  tokens, over the text tower's per-token outputs (CoCa stacks its multimodal layers on the unimodal ones), and a
  head to the vocabulary: position j predicts caption token j + 1, the last caption position predicts EOD.

Plain torch modules, replicated on every tensor-parallel rank (their inputs, the ViT's gathered tokens and the
captions, are the same on every TP rank, so are their gradients); the loss is the objective's
(`objectives.contrastive`). Under dist_checkpointing they are replicated tensors like the ViT's patch embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni_mega.config import ContrastiveConfig

IGNORE = -100  # caption targets that carry no loss (padding, the CLS slot)


def _layer(cfg: ContrastiveConfig, dtype: torch.dtype, decoder: bool) -> nn.Module:
    kind = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    return kind(cfg.hidden_size, cfg.num_attention_heads, dim_feedforward=4 * cfg.hidden_size, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True, dtype=dtype)


class ImagePooler(nn.Module):
    """Merged ViT tokens (per image) -> projected tokens [B, N, w] for the decoder and the image embedding [B, D]."""

    def __init__(self, cfg: ContrastiveConfig, image_width: int, dtype: torch.dtype) -> None:
        super().__init__()
        w = cfg.hidden_size
        self.proj = nn.Linear(image_width, w, dtype=dtype)
        self.query = nn.Parameter(torch.randn(1, 1, w, dtype=dtype) * w ** -0.5)
        self.attn = nn.MultiheadAttention(w, cfg.num_attention_heads, batch_first=True, dtype=dtype)
        self.norm = nn.LayerNorm(w, dtype=dtype)
        self.head = nn.Linear(w, cfg.embed_dim, bias=False, dtype=dtype)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale), dtype=torch.float32))
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias), dtype=torch.float32))

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, N, image_width], pad bool [B, N] (True = padding) -> (projected [B, N, w], embedding [B, D])."""
        mem = self.proj(tokens)
        pooled, _ = self.attn(self.query.expand(mem.size(0), -1, -1), mem, mem, key_padding_mask=pad,
                              need_weights=False)
        return mem, self.head(self.norm(pooled[:, 0]))


class TextTower(nn.Module):
    """[BOS, caption, CLS] -> per-token states [B, L + 2, w] and the text embedding [B, D] (at the CLS slot)."""

    def __init__(self, cfg: ContrastiveConfig, vocab_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        w = cfg.hidden_size
        self.embed = nn.Embedding(vocab_size, w, dtype=dtype)
        self.pos = nn.Parameter(torch.randn(cfg.max_text_length + 2, w, dtype=dtype) * 0.01)
        self.cls = nn.Parameter(torch.randn(w, dtype=dtype) * w ** -0.5)
        self.layers = nn.ModuleList(_layer(cfg, dtype, decoder=False) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(w, dtype=dtype)
        self.head = nn.Linear(w, cfg.embed_dim, bias=False, dtype=dtype)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L + 1] = BOS then each caption (right-padded); lengths [B] caption tokens. The CLS slot goes at
        position lengths + 1; with causal attention no real position ever sees the padding after it."""
        b, n = ids.shape
        x = self.embed(ids)
        x = torch.cat([x, x.new_zeros(b, 1, x.size(-1))], dim=1)  # room for the CLS slot of the longest caption
        cls_at = (lengths + 1).long()
        rows = torch.arange(b, device=ids.device)
        x = x.index_put((rows, cls_at), self.cls.to(x.dtype).expand(b, -1))
        x = x + self.pos[: n + 1]
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool, device=ids.device).triu(1)  # True = not attended
        for layer in self.layers:
            x = layer(x, src_mask=causal)
        return x, self.head(self.norm(x[rows, cls_at]))


class CaptionDecoder(nn.Module):
    """Text-tower states + projected image tokens -> caption logits [B, L + 2, V]."""

    def __init__(self, cfg: ContrastiveConfig, vocab_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        w = cfg.hidden_size
        self.layers = nn.ModuleList(_layer(cfg, dtype, decoder=True) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(w, dtype=dtype)
        self.head = nn.Linear(w, vocab_size, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mem_pad: torch.Tensor) -> torch.Tensor:
        n = x.size(1)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        for layer in self.layers:
            x = layer(x, mem, tgt_mask=causal, memory_key_padding_mask=mem_pad)
        return self.head(self.norm(x))


class ContrastiveTowers(nn.Module):
    """The three groups together; `forward` gives what the contrastive objective needs."""

    def __init__(self, cfg: ContrastiveConfig, image_width: int, vocab_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.image_pooler = ImagePooler(cfg, image_width, dtype)
        self.text_tower = TextTower(cfg, vocab_size, dtype)
        self.caption_decoder = CaptionDecoder(cfg, vocab_size, dtype)

    def encode_image(self, features: torch.Tensor, grid_thw: torch.Tensor, merge_size: int):
        """Merged ViT features [T', d] of the packed images -> (projected tokens, padding mask, embedding [B, D])."""
        tokens, pad = pad_per_image(features, grid_thw, merge_size)
        mem, emb = self.image_pooler(tokens.to(self.image_pooler.proj.weight.dtype), pad)
        return mem, pad, emb

    @torch.no_grad()
    def embed(self, features: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None, merge_size: int = 2,
              text: torch.Tensor | None = None, text_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings [B, D] (float32) of images (merged ViT features + grid) or of texts (as in
        `forward`), for retrieval."""
        if text is not None:
            return F.normalize(self.text_tower(text, text_lengths)[1].float(), dim=-1)
        return F.normalize(self.encode_image(features, grid_thw, merge_size)[2].float(), dim=-1)

    def forward(self, features: torch.Tensor, grid_thw: torch.Tensor, merge_size: int, text: torch.Tensor,
                text_lengths: torch.Tensor, *, caption: bool = True) -> dict:
        """Returns {"image": [B, D], "text": [B, D] (both L2-normalised, float32), "logit_scale", "logit_bias"
        (0-dim float32: the temperature exp(logit_scale) capped at 100, as CLIP), "caption_logits" [B, L + 2, V] and
        "caption_labels" [B, L + 2] (IGNORE where no loss) when `caption`}."""
        mem, pad, img = self.encode_image(features, grid_thw, merge_size)
        states, txt = self.text_tower(text, text_lengths)
        pooler = self.image_pooler
        out = {"image": F.normalize(img.float(), dim=-1), "text": F.normalize(txt.float(), dim=-1),
               "logit_scale": pooler.logit_scale.float().exp().clamp(max=100.0),
               "logit_bias": pooler.logit_bias.float()}
        if caption:
            out["caption_logits"] = self.caption_decoder(states, mem, pad)
            # text[:, 0] is the BOS, the tokenizer's EOD (data.image_text_source): it also ends every caption
            out["caption_labels"] = caption_labels(text, text_lengths, eod=int(text[0, 0]) if text.numel() else 0)
        return out


def pad_per_image(features: torch.Tensor, grid_thw: torch.Tensor, merge_size: int):
    """Packed merged tokens [T', d] -> ([B, N_max, d] right-padded per image, bool padding mask [B, N_max])."""
    counts = (grid_thw.prod(dim=1) // merge_size ** 2).tolist()
    n = max(counts)
    out = features.new_zeros(len(counts), n, features.size(-1))
    pad = torch.ones(len(counts), n, dtype=torch.bool, device=features.device)
    start = 0
    for i, c in enumerate(counts):
        out[i, :c] = features[start:start + c]
        pad[i, :c] = False
        start += c
    return out, pad


def caption_labels(text: torch.Tensor, lengths: torch.Tensor, eod: int) -> torch.Tensor:
    """Targets of the decoder positions 0 .. L + 1 for text = [BOS, c_1 .. c_n, pad]: c_{j+1} at j < n, EOD at n,
    IGNORE at the CLS slot and the padding."""
    b, n = text.shape
    labels = torch.full((b, n + 1), IGNORE, dtype=torch.long, device=text.device)
    labels[:, : n - 1] = text[:, 1:]
    j = torch.arange(n + 1, device=text.device)[None]
    lengths = lengths.long()[:, None]
    labels = torch.where(j < lengths, labels, torch.full_like(labels, IGNORE))
    return torch.where(j == lengths, torch.full_like(labels, eod), labels)

