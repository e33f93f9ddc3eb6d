"""`omni-mega train CONFIG --dry-run`: the run's plan and a per-GPU memory estimate, from the config alone.

Parameters are counted analytically from the config (no model is built, so a 7B plan takes milliseconds); the counts
follow exactly the modules `omni_mega.models.factory.build_model` creates (megatron local/TE GPT layers, our ViT,
projector and Ovis visual tokenizer) and tests/test_dry_run.py holds them against built tiny models.

Memory per GPU, for the stage's trainable set (frozen parameters hold only their weights):
- weights: 2 bytes per parameter held by the rank (bf16; 4 with train.dtype fp32);
- megatron DDP grad buffer: 4 bytes (fp32 main grads, `grad_reduce_in_fp32`) per trainable parameter;
- distributed optimizer: fp32 master weights + Adam m + v = 12 bytes per trainable parameter, sharded over DP
  (8 bytes, no master copy, with fp32 weights); not sharded when `optim.distributed_optimizer` is false;
- activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", selective
  activation recomputation (attention scores/softmax/dropout recomputed, which flash attention does anyway): per layer
  34*s*b*h/t bytes with sequence parallelism, s*b*h*(10 + 24/t) without (Table 2). We evaluate the terms behind those
  numbers for the actual widths (GQA keys/values, the MLP width, SwiGLU's two fc1 halves), which reduces to exactly
  34 / 10 + 24/t for a 4h GELU MLP with full multi-head attention. The first pipeline stage holds the activations of
  min(pp, micro-batches per step) micro-batches under 1F1B (x (1 + (pp-1)/(pp*vpp)) interleaved, section 4.2.3), plus
  the ViT's (run on the first stage, for the pack's visual-token budget x merge^2 patches) when the ViT trains; the
  last stage adds the fp32 logits for the loss, 4*s*b*V/t bytes. Every LLM layer's activations are counted even when
  only later layers train (an upper bound). Not counted: CUDA/NCCL workspaces, allocator fragmentation, TE buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omni_mega.config import RunConfig
from omni_mega.config.groups import parse_group
from omni_mega.config.model import LLMConfig
from omni_mega.config.plan import StagePlan, plan_stages

GIB = 1024 ** 3
H100_GIB = 80.0  # an H100 SXM's memory; the plan flags a stage whose estimate does not fit


# ---- parameter counts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """A set of parameters that move together (one group or one layer): elements over the whole model (TP shards
    summed) and how many of them are split across TP ranks (the rest are replicated on every TP rank). `expert`:
    elements of routed experts, split over TP x EP ranks (the leaf is all experts or none of it); `active`: elements
    one token passes through (its top-k experts of a MoE layer), None = all of them."""

    total: int
    split: int
    expert: bool = False
    active: int | None = None

    def per_rank(self, tp: int, ep: int = 1) -> int:
        return self.split // (tp * (ep if self.expert else 1)) + (self.total - self.split)

    @property
    def activated(self) -> int:
        return self.total if self.active is None else self.active


def _layer(h: int, heads: int, groups: int, ffn: int, glu: bool, bias: bool, layernorm: bool, *,
           head_dim: int | None = None, qkv_bias: bool = False, qk_norm: bool = False) -> Leaf:
    """One megatron TransformerLayer: norm, QKV (column-parallel), proj (row-parallel), norm, fc1, fc2; `bias`: every
    linear has one, `qkv_bias`: only QKV; `qk_norm`: per-head query and key norms (head_dim wide, replicated)."""
    d = head_dim or h // heads
    qkv = (heads + 2 * groups) * d
    fc1 = ffn * (2 if glu else 1)
    split = h * qkv + heads * d * h + h * fc1 + ffn * h + (qkv + fc1 if bias else qkv if qkv_bias else 0)
    replicated = (2 * h if bias else 0) + 2 * _norm(h, layernorm)  # row-parallel biases; the two norms
    replicated += 2 * _norm(d, layernorm) if qk_norm else 0
    return Leaf(split + replicated, split)


def _norm(h: int, layernorm: bool) -> int:
    return 2 * h if layernorm else h  # LayerNorm has a bias, RMSNorm does not


def _mla_layer(llm, ffn: int | None) -> Leaf:
    """A layer with megatron's MLASelfAttention (column-parallel down/up projections, replicated latent norms) and a
    dense MLP of width `ffn` (None: no MLP, the MoE layer's parts are leaves of their own)."""
    h, n, ln = llm.hidden_size, llm.num_attention_heads, llm.normalization == "LayerNorm"
    qk = llm.qk_head_dim + llm.qk_pos_emb_head_dim
    q = h * n * qk if llm.q_lora_rank is None else h * llm.q_lora_rank + llm.q_lora_rank * n * qk
    split = q + h * (llm.kv_lora_rank + llm.qk_pos_emb_head_dim) + llm.kv_lora_rank * n * (llm.qk_head_dim
                                                                                           + llm.v_head_dim)
    split += n * llm.v_head_dim * h  # output projection
    replicated = 2 * _norm(h, ln) + _norm(llm.kv_lora_rank, ln) + (_norm(llm.q_lora_rank, ln) if llm.q_lora_rank else 0)
    if ffn is not None:
        split += h * ffn * (2 if llm.activation == "swiglu" else 1) + ffn * h
    return Leaf(split + replicated, split)


def llm_layer_leaves(llm) -> list[dict[str, Leaf]]:
    """Per LLM layer (global order): its leaves, the layer itself under "" and, in a MoE layer, its `experts`,
    `router` and `shared_experts` (megatron's MoELayer: a [E, h] gate kept fp32-wide but stored in the params dtype,
    E local MLPs of moe_ffn_hidden_size, shared experts as one MLP of their summed width)."""
    h, glu = llm.hidden_size, llm.activation == "swiglu"
    groups = llm.num_query_groups or llm.num_attention_heads
    moe_pattern = LLMConfig.moe_layers(llm) if getattr(llm, "num_moe_experts", None) else [False] * llm.num_layers
    out = []
    for moe in moe_pattern:
        ffn = None if moe else ffn_size(llm)
        if getattr(llm, "multi_latent_attention", False):
            layer = _mla_layer(llm, ffn)
        else:
            layer = _layer(h, llm.num_attention_heads, groups, ffn or 0, glu, False, llm.normalization == "LayerNorm",
                           head_dim=getattr(llm, "kv_channels", None), qkv_bias=getattr(llm, "add_qkv_bias", False),
                           qk_norm=getattr(llm, "qk_layernorm", False))
        leaves = {"": layer}
        if moe:
            e, k = llm.num_moe_experts, llm.moe_router_topk
            f = llm.moe_ffn_hidden_size or ffn_size(llm)
            one = h * f * (2 if glu else 1) + f * h
            leaves["experts"] = Leaf(e * one, e * one, expert=True, active=k * one)
            leaves["router"] = Leaf(e * h, 0)
            if llm.moe_shared_expert_intermediate_size:
                sf = llm.moe_shared_expert_intermediate_size
                shared = h * sf * (2 if glu else 1) + sf * h
                leaves["shared_experts"] = Leaf(shared, shared)
        out.append(leaves)
    return out


# The two sizing rules of omni_mega.models.llm, restated here so planning never imports megatron or torch (a plan
# must print in well under a second); tests/test_dry_run.py checks they agree with the models' own functions.
def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """`models.llm.padded_vocab_size`: padded to a multiple of lcm(128, tp)."""
    step = math.lcm(multiple, tp)
    return -(-vocab_size // step) * step


def ffn_size(llm) -> int:
    """`models.llm.ffn_size`: the MLP width (8/3 h rounded up to 64 for SwiGLU, 4 h for GELU, unless set)."""
    if llm.ffn_hidden_size is not None:
        return llm.ffn_hidden_size
    return 64 * ((8 * llm.hidden_size // 3 + 63) // 64) if llm.activation == "swiglu" else 4 * llm.hidden_size


def llm_vocab(cfg: RunConfig) -> int:
    """The padded LLM vocabulary the trainer builds (`training.curriculum.run_vocab_size`: the config's, else the
    one the run's datasets record)."""
    from omni_mega.training.curriculum import run_vocab_size

    return padded_vocab_size(run_vocab_size(cfg, cfg.data.data_dir), cfg.parallel.tp)


def leaves(cfg: RunConfig) -> dict[str, Leaf]:
    """Leaf name -> Leaf. Layer lists have one leaf per layer: `llm.layers.3`, `vit.layers.0`."""
    llm, vit, tp = cfg.model.llm, cfg.model.vit, cfg.parallel.tp
    h, v = llm.hidden_size, llm_vocab(cfg)
    out: dict[str, Leaf] = {"llm.embedding": Leaf(v * h, v * h)}
    for i, parts in enumerate(llm_layer_leaves(llm)):
        out.update({f"llm.layers.{i}" + (f".{k}" if k else ""): leaf for k, leaf in parts.items()})
    out["llm.final_norm"] = Leaf(_norm(h, llm.normalization == "LayerNorm"), 0)
    out["llm.output_layer"] = Leaf(v * h, v * h) if llm.untie_embeddings else Leaf(0, 0)  # tied: the embedding's
    out.update(part_leaves(cfg))
    if vit is None:
        return out
    hv, ln = vit.hidden_size, vit.normalization == "LayerNorm"
    in_features = vit.in_channels * vit.temporal_patch_size * vit.patch_size ** 2
    bias = hv if getattr(vit, "patch_bias", False) else 0
    out["vit.patch_embed"] = Leaf(in_features * hv + bias + vit.pos_embed_grid ** 2 * hv, 0)  # plain Linear + table
    vlayer = _layer(hv, vit.num_attention_heads, vit.num_attention_heads, vit.ffn_hidden_size or 4 * hv,
                    vit.activation == "swiglu", True, ln)
    out.update({f"vit.layers.{i}": vlayer for i in range(vit.num_layers)})
    out["vit.final_norm"] = Leaf(_norm(hv, ln), 0)
    d_in = vit.merge_size ** 2 * hv
    conn = cfg.model.connector
    if conn is None or conn.kind == "mlp":
        hid = (conn.projector_hidden_size if conn else None) or h
        out["projector"] = Leaf(d_in * hid + hid + hid * h + h, d_in * hid + hid + hid * h)  # fc2 bias replicated
    else:
        vp = padded_vocab_size(conn.visual_vocab_size - conn.num_indicators, tp)
        out["visual_head"] = Leaf(vp * d_in + 2 * vp, vp * d_in + 2 * vp)  # weight + vocabulary LayerNorm
        ind = conn.num_indicators * h  # replicated indicator rows
        out["vet"] = Leaf(vp * h + ind, vp * h)
    return out


PART_PREFIXES = ("audio.", "audio_projector", "ctc_head", "codec", "talker.", "classifier", "image_pooler",
                 "text_tower", "caption_decoder")


def part_leaves(cfg: RunConfig) -> dict[str, Leaf]:
    """Leaves of the audio encoder, CTC head, audio projector, codec, Talker and classifier (models.audio,
    models.speech, models.vision.classifier), counted as those modules are built."""
    m, out = cfg.model, {}
    h = m.llm.hidden_size
    if m.audio is not None:
        a, d = m.audio, m.audio.hidden_size
        ln = a.normalization == "LayerNorm"
        out["audio.conv"] = Leaf(a.n_mels * d * 3 + d + d * d * 3 + d, 0)
        layer = _layer(d, a.num_attention_heads, a.num_attention_heads, a.ffn_hidden_size or 4 * d, False, True, ln)
        out.update({f"audio.layers.{i}": layer for i in range(a.num_layers)})
        out["audio.final_norm"] = Leaf(_norm(d, ln), 0)
        out["ctc_head"] = Leaf(d * (a.ctc_vocab_size + 1) + a.ctc_vocab_size + 1, 0)
        hid = a.projector_hidden_size or h
        out["audio_projector"] = Leaf(d * hid + hid + hid * h + h, d * hid + hid + hid * h)
    if m.codec is not None:
        c = m.codec
        f, w = c.n_mels * c.frame_stack, c.hidden_size
        mlp = lambda i, o: i * w + w + w * w + w + w * o + o  # noqa: E731
        out["codec"] = Leaf(mlp(f, c.dim) + mlp(c.dim, f) + c.codebooks * c.codebook_size * c.dim, 0)
    if m.talker is not None and m.codec is not None:
        t, c, d = m.talker, m.codec, m.talker.hidden_size
        out["talker.embed"] = Leaf((t.text_vocab_size + c.codebooks * c.codebook_size + 1 + t.max_positions) * d, 0)
        layer = _layer(d, t.num_attention_heads, t.num_attention_heads, t.ffn_hidden_size or 4 * d, False, True, True)
        out.update({f"talker.layers.{i}": layer for i in range(t.num_layers)})
        res = max(c.codebooks - 1, 1) * c.codebook_size
        out["talker.heads"] = Leaf(2 * d + d * (c.codebook_size + 1) + c.codebook_size + 1 + d * res + res, 0)
    if m.classifier is not None and m.vit is not None:
        d_in = m.vit.merge_size ** 2 * m.vit.hidden_size
        n = len(m.classifier.labels)
        out["classifier"] = Leaf(2 * d_in + d_in * n + n, 0)
    if m.contrastive is not None and m.vit is not None:
        out.update(contrastive_leaves(cfg))
    return out


def contrastive_leaves(cfg: RunConfig) -> dict[str, Leaf]:
    """The contrastive towers (models.contrastive), replicated on every TP rank: torch's pre-norm encoder layer
    (self-attention, 4w MLP, two LayerNorms) is 12w^2 + 13w, the decoder layer (plus cross-attention and a third
    norm) 16w^2 + 19w."""
    m = cfg.model
    c, w, d = m.contrastive, m.contrastive.hidden_size, m.contrastive.embed_dim
    v = c.vocab_size or llm_vocab(cfg)
    d_in = m.vit.merge_size ** 2 * m.vit.hidden_size
    attn = 4 * w * w + 4 * w
    return {
        "image_pooler": Leaf(d_in * w + w + w + attn + 2 * w + w * d + 2, 0),
        "text_tower": Leaf(v * w + (c.max_text_length + 2) * w + w + c.text_layers * (12 * w * w + 13 * w) + 2 * w
                           + w * d, 0),
        "caption_decoder": Leaf(c.decoder_layers * (16 * w * w + 19 * w) + 2 * w + w * v, 0),
    }


def group_leaves(name: str, names: list[str], cfg: RunConfig) -> list[str]:
    """Leaves a module-group name (`llm`, `vit.layers[-1:]`, `vet`, ...) selects, following `OmniModel.named_groups`:
    `vit` is the whole tower (patch embedding, layers, final norm), `llm` the whole GPTModel."""
    ref = parse_group(name)
    if ref.base in ("llm.layers", "vit.layers", "audio.layers", "talker.layers"):
        n = getattr(cfg.model, ref.base.split(".")[0]).num_layers
        picked = {f"{ref.base}.{i}" for i in ref.select(n)}
        return [k for k in names if k in picked or k.rsplit(".", 1)[0] in picked]
    if ref.base in ("llm.experts", "llm.router", "llm.shared_experts"):  # every MoE layer's part
        part = ref.base.split(".", 1)[1]
        return [k for k in names if k.startswith("llm.layers.") and k.endswith("." + part)]
    if ref.base in ("llm", "vit", "audio", "talker"):
        return [k for k in names if k.startswith(ref.base + ".")]
    return [k for k in names if k == ref.base]


def trainable_leaves(cfg: RunConfig, groups: list[str]) -> dict[str, list[str]]:
    names = list(leaves(cfg))
    return {g: group_leaves(g, names, cfg) for g in groups}


# ---- layout -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    world_size: int
    tp: int
    pp: int
    vpp: int
    cp: int
    sp: bool
    ep: int = 1

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp * self.cp)

    @property
    def edp(self) -> int:
        """Data-parallel replicas of one expert (megatron's expert data parallel size)."""
        return self.world_size // (self.tp * self.ep * self.pp)


def layout_of(cfg: RunConfig, world_size: int) -> Layout:
    p = cfg.parallel
    return Layout(world_size, p.tp, p.pp, p.vpp or 1, p.cp, p.sp, getattr(p, "ep", 1))


def rank_leaves(cfg: RunConfig, lay: Layout, rank: int) -> list[str]:
    """Leaves pipeline rank `rank` holds: its layers (chunks rank, rank + pp, ... of L / (pp * vpp) layers), the
    embedding and the vision side on rank 0, the final norm and output layer on the last rank."""
    llm = cfg.model.llm
    per_chunk = llm.num_layers // (lay.pp * lay.vpp)
    everything = leaves(cfg)
    mine = {f"llm.layers.{c * per_chunk + j}" for c in range(rank, lay.pp * lay.vpp, lay.pp) for j in range(per_chunk)}
    names = [k for k in everything if k in mine or (k.startswith("llm.layers.") and k.rsplit(".", 1)[0] in mine)]
    if rank == 0:
        names += ["llm.embedding"] + [k for k in everything if not k.startswith("llm.")]
    if rank == lay.pp - 1:
        names += ["llm.final_norm", "llm.output_layer"]
    return names


def rank_params(cfg: RunConfig, lay: Layout, rank: int, subset: set[str] | None = None,
                experts: bool | None = None) -> int:
    """Elements pipeline rank `rank` holds on one GPU (TP-split leaves divided by tp, routed experts by tp x ep),
    optionally only `subset`, only the routed experts (experts=True) or only the rest (False).
    Tied embeddings with pp > 1: the last rank holds its own copy of the word embeddings as the output layer."""
    lv = leaves(cfg)
    n = sum(lv[k].per_rank(lay.tp, lay.ep) for k in rank_leaves(cfg, lay, rank)
            if (subset is None or k in subset) and (experts is None or lv[k].expert == experts))
    if experts:
        return n
    tied_copy = not cfg.model.llm.untie_embeddings and lay.pp > 1 and rank == lay.pp - 1
    if tied_copy and (subset is None or {"llm.embedding", "llm.output_layer"} & subset):
        n += lv["llm.embedding"].per_rank(lay.tp)
    return n


# ---- activations (Korthikanti et al. 2022, selective recompute) ---------------------------------------------------
def layer_activation_bytes(s: int, b: int, h: int, heads: int, groups: int, ffn: int, glu: bool, t: int,
                           sp: bool, head_dim: int | None = None, *, widths: tuple[int, int, int] | None = None,
                           extra: int = 0) -> float:
    """Bytes one transformer layer keeps for backward under selective recompute, 16-bit activations.

    Replicated across TP without SP (10*s*b*h): the two norm inputs (4), the QKV input (2), the MLP input (2), the
    two dropout masks (1 + 1). Split across TP: Q (2h) and K, V (2 * 2 * kv width), the projection input (2h), the fc1
    output (2f, x2 for SwiGLU) and the activation output (2f). For h = a*d, f = 4h, no GLU: 24*s*b*h/t.
    widths: (query, key, value) widths over all heads when they are not the GQA ones (multi-latent attention);
    extra: more split bytes per token (a MoE layer's routed copies, MLA's compressed latents)."""
    d = head_dim or h // heads
    q, k, v = widths or (heads * d, groups * d, groups * d)
    proj_in = heads * d if widths is None else v
    split = 2 * q + 2 * k + 2 * v + 2 * proj_in + 2 * ffn * (2 if glu else 1) + 2 * ffn + extra
    replicated = 10 * h
    return s * b * (replicated / (t if sp else 1) + split / t)


def llm_layer_activation_bytes(llm, s: int, b: int, lay: Layout, moe: bool) -> float:
    """`layer_activation_bytes` of one LLM layer. A MoE layer keeps, per token, its top-k experts' fc1/activation
    outputs (as one MLP of k x moe_ffn_hidden_size plus the shared experts' width) and the k routed copies of its
    input and output (2 x 2 x k x h bytes); multi-latent attention keeps its full-width queries, keys and values and
    the compressed latent (kv_lora_rank + RoPE part)."""
    h, heads = llm.hidden_size, llm.num_attention_heads
    groups = llm.num_query_groups or heads
    ffn, extra, widths = ffn_size(llm), 0, None
    if moe:
        k = llm.moe_router_topk
        ffn = k * (llm.moe_ffn_hidden_size or ffn_size(llm)) + (llm.moe_shared_expert_intermediate_size or 0)
        extra += 4 * k * h
    if getattr(llm, "multi_latent_attention", False):
        qk = llm.qk_head_dim + llm.qk_pos_emb_head_dim
        widths = (heads * qk, heads * qk, heads * llm.v_head_dim)
        extra += 2 * (llm.kv_lora_rank + llm.qk_pos_emb_head_dim + (llm.q_lora_rank or 0))
    return layer_activation_bytes(s, b, h, heads, groups, ffn, llm.activation == "swiglu", lay.tp, lay.sp,
                                  llm.head_dim, widths=widths, extra=extra)


def activation_bytes(cfg: RunConfig, lay: Layout, seq: int, trainable: set[str], n_micro: int) -> tuple[float, float]:
    """(first pipeline rank, last pipeline rank) activation bytes for one step's in-flight micro-batches."""
    llm, vit, b = cfg.model.llm, cfg.model.vit, cfg.data.micro_batch_size
    s = seq // lay.cp
    pattern = LLMConfig.moe_layers(llm) if getattr(llm, "num_moe_experts", None) else [False] * llm.num_layers
    # the mean over the model's layers (dense and MoE layers differ; a rank's share of each kind is close to it)
    per_layer = sum(llm_layer_activation_bytes(llm, s, b, lay, moe) for moe in pattern) / llm.num_layers
    inflight = min(lay.pp, n_micro)
    interleave = 1 + (lay.pp - 1) / (lay.pp * lay.vpp) if lay.vpp > 1 else 1.0
    layers_per_rank = llm.num_layers // lay.pp
    first = per_layer * layers_per_rank * inflight * interleave
    last = per_layer * layers_per_rank * (1 if lay.pp > 1 else inflight)  # 1F1B: the last stage holds one
    last += 4 * s * b * llm_vocab(cfg) / lay.tp  # fp32 logits for the cross entropy
    if lay.pp == 1:
        first = last
    if vit is not None and any(k.startswith("vit.") for k in trainable):
        patches = (cfg.data.max_visual_tokens or seq) * vit.merge_size ** 2
        vlayer = layer_activation_bytes(patches, 1, vit.hidden_size, vit.num_attention_heads,
                                        vit.num_attention_heads, vit.ffn_hidden_size or 4 * vit.hidden_size,
                                        vit.activation == "swiglu", lay.tp, lay.sp)
        first += vlayer * vit.num_layers * inflight
    return first, last


# ---- memory per GPU -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    """Bytes on one GPU of a pipeline rank."""

    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations


def distributed_optimizer(cfg: RunConfig) -> bool:
    """The plan is for GPUs, where `optim.distributed_optimizer: null` means on; only an explicit false is off."""
    return getattr(cfg.optim, "distributed_optimizer", None) is not False


def stage_memory(cfg: RunConfig, lay: Layout, seq: int, gbs: int, trainable: set[str]) -> list[Memory]:
    """Memory of pipeline ranks 0 and pp-1 (one entry when pp == 1) for a stage's trainable leaves."""
    fp32 = cfg.train.dtype == "fp32"
    w_bytes, opt_bytes = (4, 8) if fp32 else (2, 12)
    dist_opt = distributed_optimizer(cfg)
    shards = max(1, lay.dp) if dist_opt else 1
    expert_shards = max(1, lay.edp) if dist_opt else 1  # an expert's state is sharded over its own replicas
    n_micro = max(1, gbs // (cfg.data.micro_batch_size * max(1, lay.dp)))
    act_first, act_last = activation_bytes(cfg, lay, seq, trainable, n_micro)
    out = []
    for rank, act in ((0, act_first), (lay.pp - 1, act_last))[: 1 if lay.pp == 1 else 2]:
        held = rank_params(cfg, lay, rank)
        train = rank_params(cfg, lay, rank, trainable)
        train_experts = rank_params(cfg, lay, rank, trainable, experts=True)
        opt = (train - train_experts) * opt_bytes / shards + train_experts * opt_bytes / expert_shards
        out.append(Memory(held * w_bytes, train * 4, opt, act))
    return out


# ---- the printed plan ---------------------------------------------------------------------------------------------
def _pixels(n: int) -> str:
    r = math.isqrt(n)
    return f"{r}^2" if r * r == n else f"{n:,} px"


def _tokens(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.4g}{unit}"
    return f"{n:g}"


def _gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB" if b >= GIB / 10 else f"{b / 2 ** 20:.2f} MiB"


def stage_lines(cfg: RunConfig, lay: Layout, plan: StagePlan, lr_plan, lv: dict[str, Leaf]) -> tuple[list[str], float]:
    s, tokens = plan.cfg, plan.tokens
    chosen = trainable_leaves(cfg, list(plan.trainable))
    union = {k for ks in chosen.values() for k in ks}
    seg = lr_plan.segment_of(plan.index)
    if plan.objective == "grpo":
        g = s.grpo
        head = (f"{plan.steps:,} steps x {plan.global_batch_size} prompts x {g.group_size} samples of up to "
                f"{g.max_new_tokens:,} new tokens (temperature {g.temperature:g}), packed into {plan.seq_length}-token "
                "sequences")
    elif plan.objective == "contrastive":
        b = plan.micro_batch_size
        head = (f"{plan.steps:,} steps x {plan.global_batch_size} image-text pairs ({b} per micro-batch per rank; "
                f"each micro-batch scored against {b * lay.dp:,} gathered texts)")
    else:
        head = (f"{plan.steps:,} steps x {plan.global_batch_size} x {plan.seq_length} = {tokens:,} tokens "
                f"({_tokens(tokens)})" + (f", asked {_tokens(s.tokens)}" if s.tokens else ""))
    lines = [f"  [{plan.index + 1}] stage {plan.name} ({plan.objective}): {head}, RoPE base {plan.rope_base:,g}"]
    if plan.vision:
        if not any(d.structured for d in plan.mix):
            lines.append("      multimodal share 0 (text only)")
        else:
            r0, r1 = plan.ratio_start, plan.ratio_end
            ratio = f"{r0:g}" + (f" -> {r1:g}" if r1 != r0 else "")
            lines.append(f"      multimodal share {ratio}; resolution {_pixels(plan.min_pixels)} - "
                         f"{_pixels(plan.max_pixels)}")
    lines.append(f"      trainable {sum(lv[k].total for k in union):,} params: "
                 + ", ".join(f"{g} {sum(lv[k].total for k in ks):,}" for g, ks in chosen.items()))
    lines.append(f"      lr: {s.schedule}, {seg.decay} peak {seg.peak:.3g} min {seg.min_lr:.3g} warmup {seg.warmup}"
                 f"; {lr_plan.lr(plan.start_step):.3g} -> {lr_plan.lr(plan.end_step - 1):.3g} in this stage")
    worst = 0.0
    for rank, m in zip((0, lay.pp - 1), stage_memory(cfg, lay, plan.seq_length, plan.global_batch_size, union)):
        worst = max(worst, m.total)
        lines.append(f"      memory/GPU pp rank {rank}: weights {_gib(m.weights)} + grads {_gib(m.grads)} + optimizer "
                     f"{_gib(m.optimizer)} + activations {_gib(m.activations)} = {_gib(m.total)}"
                     + ("  ** over an 80 GiB H100 **" if m.total / GIB > H100_GIB else ""))
    return lines, worst


def format_plan(cfg: RunConfig, world_size: int) -> str:
    """The dry-run text: layout, parameter counts, one block per stage, totals."""
    from omni_mega.training.curriculum import LRPlan

    lay = layout_of(cfg, world_size)
    lv = leaves(cfg)
    plans, lr_plan = plan_stages(cfg), LRPlan(cfg)
    total = sum(x.total for x in lv.values())
    parts = sum(x.total for k, x in lv.items() if k.startswith(PART_PREFIXES))
    vision = sum(x.total for k, x in lv.items() if not k.startswith("llm.")) - parts
    lines = [f"run {cfg.name}: {len(plans)} stages",
             f"layout: world {lay.world_size} = tp {lay.tp} x pp {lay.pp} x cp {lay.cp} x dp {lay.dp}"
             f" (vpp {cfg.parallel.vpp}, sequence parallel {lay.sp}"
             + (f", experts over ep {lay.ep} x expert dp {lay.edp}" if lay.ep > 1 else "")
             + f"), micro-batch {cfg.data.micro_batch_size}, "
             + ("distributed optimizer" if distributed_optimizer(cfg) else "optimizer not sharded"),
             f"parameters: {total:,} (llm {total - vision - parts:,}, vision {vision:,}"
             + (f", audio/speech/classifier/contrastive {parts:,}" if parts else "")
             + f"; padded vocab {llm_vocab(cfg):,})"]
    llm = cfg.model.llm
    if getattr(llm, "num_moe_experts", None):
        llm_leaves = {k: x for k, x in lv.items() if k.startswith("llm.")}
        active = sum(x.activated for x in llm_leaves.values())
        experts = sum(x.total for x in llm_leaves.values() if x.expert)
        lines.append(f"llm mixture of experts: {sum(x.total for x in llm_leaves.values()):,} total, {active:,} "
                     f"activated per token (top-{llm.moe_router_topk} of {llm.num_moe_experts} routed experts"
                     + (" + shared experts" if llm.moe_shared_expert_intermediate_size else "")
                     + f" in {sum(LLMConfig.moe_layers(llm))} of {llm.num_layers} layers); routed experts "
                     f"{experts:,}, {experts // (lay.tp * lay.ep):,} per GPU")
    worst, tokens = 0.0, 0
    for p in plans:
        block, w = stage_lines(cfg, lay, p, lr_plan, lv)
        lines += block
        worst = max(worst, w)
        # GRPO's tokens depend on how long its responses are, a contrastive stage counts image-text pairs: neither
        # is in the total
        tokens += 0 if p.objective in ("grpo", "contrastive") else p.steps * p.global_batch_size * p.seq_length
    skipped = sorted({p.objective for p in plans if p.objective in ("grpo", "contrastive")})
    lines.append(f"total: {cfg.total_steps:,} steps, {tokens:,} tokens ({_tokens(tokens)}"
                 + (f", {' and '.join(o.upper() if o == 'grpo' else o for o in skipped)} stages not counted"
                    if skipped else "") + "), "
                 f"peak memory/GPU {_gib(worst)}")
    lines.append("memory model: bf16 weights, fp32 grads, fp32 master + Adam sharded over dp; activations by "
                 "Korthikanti et al. 2022 with selective recompute (see omni_mega/training/dry_run.py)")
    return "\n".join(lines)


def planning_world_size(cfg: RunConfig, world_size: int | None, detected: int) -> tuple[int, str | None]:
    """The world size to plan for: the one asked for, else the detected one when it fits the layout, else the
    smallest that does (dp = 1), with a note saying so."""
    if world_size is not None:
        return world_size, None
    p = cfg.parallel
    # the smallest world both the dense layout (tp x pp x cp) and the experts' (tp x ep x pp) divide
    mp = math.lcm(p.tp * p.pp * p.cp, p.tp * getattr(p, "ep", 1) * p.pp)
    if detected % mp == 0:
        return detected, None
    what = "tp x pp x cp, dp = 1" if mp == p.tp * p.pp * p.cp else f"dp = {mp // (p.tp * p.pp * p.cp)} for ep {p.ep}"
    return mp, (f"planning for world size {mp} ({what}): pass --world-size N or --nodes N "
                f"--gpus-per-node G for the cluster layout")
