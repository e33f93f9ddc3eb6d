"""`objective: contrastive`: image-text contrastive pre-training of the ViT (SigLIP's sigmoid loss, or CLIP's
softmax loss) plus CoCa's captioning loss: L = L_contrastive + caption_weight * L_caption (MoonViT: L_siglip +
2 L_caption; open_clip's CoCa: 1 L_clip + 2 L_caption).

A micro-batch holds b images with their captions on each data-parallel rank (`data.image_text_source`); the model
gives L2-normalised image and text embeddings x_i, y_j, the temperature t = exp(t') (at most 100) and the bias b
(`models.contrastive`). The embeddings of every data-parallel rank's micro-batch are gathered with gradients, so the
negatives are all B = b x dp captions (images for CLIP's text->image direction), z_ij = t x_i.y_j + b:

    SigLIP:  L = -1/B sum_i sum_j log sigmoid(s_ij z_ij),   s_ij = +1 if i == j else -1
    CLIP:    L = 1/(2B) sum_i [CE(t x_i.Y, i) + CE(t y_i.X, i)]      (the bias is not used)

where a pair whose captions are identical (the same tokens) also counts as positive (s_ij = +1; CLIP's target
spreads evenly over them), so a batch drawn from recurring captions never pushes an image away from a copy of its
own caption; with distinct captions this is exactly the formulas above.

Each rank computes the rows of its own images (CLIP: and texts) over all gathered columns, divided by its b; megatron
averages the ranks' gradients (1/dp), which is exactly the full batch's loss, and the gather's backward sums every
rank's gradient into the owner's slice. The caption loss is the mean next-token cross entropy of the caption tokens
(and the EOD after them) of the micro-batch. A sample whose image was rejected at decode time (sample_mask 0)
leaves its row and column out. Metrics: `contrastive_loss`, `caption_loss`, `i2t_accuracy` (share of images whose
own caption scores highest among the gathered ones), `logit_scale` (the temperature t), `logit_bias`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, metric
from omni_mega.runtime.collectives import all_gather_with_grad

METRICS = ("loss", "contrastive_loss", "caption_loss", "i2t_accuracy", "logit_scale", "logit_bias")
IGNORE = -100


def positives(b: int, offset: int, keys: torch.Tensor | None = None, keys_all: torch.Tensor | None = None,
              device=None) -> torch.Tensor:
    """bool [b, B]: which gathered texts are a correct caption of each local image: its own (column offset + i)
    and every other sample with the same caption (equal `keys`, a hash of the caption's tokens). A batch drawn from
    a set of recurring captions (the demo's 21 single-shape scenes) holds duplicates: scoring a copy of the image's
    own caption as a negative would push the pair apart and together at once."""
    total = b if keys_all is None else keys_all.numel()
    pos = torch.zeros(b, total, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)
    pos[rows, offset + rows] = True
    if keys is not None:
        pos |= keys[:, None] == keys_all[None, :]
    return pos


def siglip_loss(img: torch.Tensor, txt_all: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, offset: int,
                mask: torch.Tensor | None = None, mask_all: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """(sum over this rank's valid images i and all valid texts j of -log sigmoid(s_ij z_ij), valid images).

    img [b, D] this rank's images, txt_all [B, D] every rank's texts (rank order), image i's own text at offset + i;
    mask / mask_all: 1 for valid samples (None: all valid); pos: bool [b, B] positives (None: the own text only)."""
    logits = scale * img @ txt_all.t() + bias  # [b, B]
    if pos is None:
        pos = positives(img.size(0), offset, device=img.device)
    sign = torch.where(pos, 1.0, -1.0).to(logits.dtype)
    pair = F.logsigmoid(sign * logits)
    if mask is not None:
        pair = pair * mask[:, None] * mask_all[None, :]
    count = float(mask.sum()) if mask is not None else float(img.size(0))
    return -pair.sum(), count


def clip_loss(img: torch.Tensor, txt: torch.Tensor, img_all: torch.Tensor, txt_all: torch.Tensor,
              scale: torch.Tensor, offset: int, mask: torch.Tensor | None = None,
              mask_all: torch.Tensor | None = None, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """(sum over this rank's valid samples of CE(image -> all texts) + CE(text -> all images), 2 x valid samples).
    With several positives (pos, bool [b, B]) the target spreads evenly over them (one-hot without duplicates)."""
    if pos is None:
        pos = positives(img.size(0), offset, device=img.device)
    i2t = scale * img @ txt_all.t()
    t2i = scale * txt @ img_all.t()
    if mask_all is not None:  # rejected samples are never a candidate
        neg = torch.finfo(i2t.dtype).min
        i2t = i2t.masked_fill(mask_all[None, :] == 0, neg)
        t2i = t2i.masked_fill(mask_all[None, :] == 0, neg)
        pos = pos & (mask_all[None, :] != 0)
    target = pos.to(i2t.dtype) / pos.sum(dim=1, keepdim=True).clamp(min=1).to(i2t.dtype)
    ce = -(target * F.log_softmax(i2t, dim=1)).sum(1) - (target * F.log_softmax(t2i, dim=1)).sum(1)
    if mask is not None:
        ce = ce * mask
    count = float(mask.sum()) if mask is not None else float(img.size(0))
    return ce.sum(), 2.0 * count


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None):
    """(sum of the captions' next-token cross entropy, tokens): logits [b, n, V], labels [b, n] (IGNORE: none)."""
    if mask is not None:
        labels = labels.masked_fill(mask[:, None] == 0, IGNORE)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                         reduction="sum")
    return ce, int((labels != IGNORE).sum())


def dp_group():
    """megatron's data-parallel group (None before megatron's parallel state exists: one rank)."""
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group() if ps.model_parallel_is_initialized() else None


def contrastive_terms(out: dict, mask: torch.Tensor, kind: str, group=None, keys: torch.Tensor | None = None) -> dict:
    """The contrastive loss of one micro-batch on this rank from the model's outputs (see the module docstring):
    {"loss": mean over this rank's valid samples, "hits", "images"}; keys: int64 [b] caption hashes (equal captions
    are positives of each other; None: only the own caption). Collective over `group` (None: no gather, this rank's
    micro-batch is the whole batch)."""
    img, txt = out["image"], out["text"]
    if group is None:  # one rank holds the whole batch (all_gather_with_grad would read None as the world)
        rank, gather = 0, (lambda t: t)
    else:
        rank, gather = torch.distributed.get_rank(group), (lambda t: all_gather_with_grad(t, group))
    offset = rank * img.size(0)
    txt_all = gather(txt)
    mask_all = gather(mask)
    pos = positives(img.size(0), offset, keys, gather(keys) if keys is not None else None, img.device)
    if kind == "siglip":
        total, count = siglip_loss(img, txt_all, out["logit_scale"], out["logit_bias"], offset, mask, mask_all, pos)
    else:
        img_all = gather(img)
        total, count = clip_loss(img, txt, img_all, txt_all, out["logit_scale"], offset, mask, mask_all, pos)
    with torch.no_grad():  # the best-scoring caption is a correct one
        scores = (img @ txt_all.t()).masked_fill(mask_all[None, :] == 0, float("-inf"))
        hits = (pos.gather(1, scores.argmax(dim=1, keepdim=True))[:, 0].float() * mask).sum()
    return {"loss": total / max(count, 1.0), "hits": hits, "images": float(mask.sum())}


def contrastive_loss_func(kind: str, caption_weight: float, mask: torch.Tensor, keys: torch.Tensor | None,
                          out: dict):
    """megatron's loss_func contract: (mean loss of the micro-batch on this rank, {name: [sum, count]})."""
    con = contrastive_terms(out, mask, kind, dp_group(), keys)
    cap_sum, cap_n = caption_loss(out["caption_logits"], out["caption_labels"], mask)
    cap = cap_sum / max(cap_n, 1)
    loss = con["loss"] + caption_weight * cap
    return loss, {"loss": metric(loss), "contrastive_loss": metric(con["loss"]), "caption_loss": metric(cap),
                  "i2t_accuracy": metric(con["hits"], con["images"]), "logit_scale": metric(out["logit_scale"]),
                  "logit_bias": metric(out["logit_bias"])}


class ContrastiveObjective(Objective):
    """Built from the stage plan: `plan.cfg.contrastive` (loss kind, caption weight)."""

    name = "contrastive"
    metric_names = METRICS
    per_token_loss = False  # one mean per micro-batch; data-parallel ranks average (the full batch's loss)

    def __init__(self, plan=None) -> None:
        c = getattr(getattr(plan, "cfg", None), "contrastive", None)
        self.kind = c.loss if c is not None else "siglip"
        self.caption_weight = c.caption_weight if c is not None else 2.0

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        out = model(None, None, task="contrastive", pixel_values=batch["pixel_values"], grid_thw=batch["grid_thw"],
                    text=batch["text"], text_lengths=batch["text_lengths"])
        return out, partial(contrastive_loss_func, self.kind, self.caption_weight, batch["sample_mask"],
                            batch.get("text_keys"))
