"""Mixture of experts and multi-latent attention in the LLM, through megatron-core's own modules.

MoE layers are megatron's `MoELayer` (a `TopKRouter`, local experts as `SequentialMLP`, optional `SharedExpertMLP`)
placed in our CPU layer spec (packed THD attention + SP-capable norms, `models.vision.attention`), or megatron's TE
layer specs when TransformerEngine imports; `moe_layer_freq` picks the MoE layers (the others keep the dense MLP of
`ffn_hidden_size`). Multi-latent attention is megatron's `MLASelfAttention` with the same packed core attention.

Expert parallelism (`parallel.ep`) splits each MoE layer's experts over `ep` ranks of the data-parallel group;
`SequentialMLP` writes every expert under its global index, so dist checkpoints reshard across EP. The allgather
token dispatcher runs over gloo; alltoall needs CUDA streams (GPUs). The load-balancing loss travels through
megatron's `MoEAuxLossAutoScaler` (the schedules scale it like the objective's loss: per micro-batch or per token),
and `step_metrics` reports it as `moe_aux_loss`.

megatron-core 0.16.1 without TransformerEngine needs two stand-ins, set by `cpu_workarounds` (idempotent, only when
TE is absent): the router's gating function names `te_general_gemm`, which is only defined when TE imports (a
NameError at the first forward; None selects its torch.mm path), and `multi_latent_attention.HAVE_TE` ends up True
because its TE import block succeeds with TE's classes as None (an isinstance(..., None) TypeError when MLA builds).
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer.moe.router import TopKRouter

from omni_mega.config import LLMConfig, ParallelConfig
from omni_mega.runtime.capabilities import probe

AUX_LOSS_NAME = "load_balancing_loss"  # megatron's tracker entry for the aux_loss load-balancing type


def cpu_workarounds() -> None:
    """The two megatron-core 0.16.1 stand-ins needed without TransformerEngine (see the module docstring)."""
    if probe().te:
        return
    import megatron.core.transformer.moe.moe_utils as moe_utils
    import megatron.core.transformer.multi_latent_attention as mla

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    mla.HAVE_TE = False


def moe_config_kwargs(cfg: LLMConfig, parallel: ParallelConfig) -> dict:
    """TransformerConfig fields of the MoE part (empty for a dense model; expert parallelism is set either way)."""
    out = {"expert_model_parallel_size": parallel.ep}
    if cfg.num_moe_experts is None:
        return out
    # checked here, when a model is built, not in config validation: a GPU recipe still plans (--dry-run) on a CPU
    if cfg.moe_token_dispatcher_type == "alltoall" and not torch.cuda.is_available():
        raise ValueError("model.llm.moe_token_dispatcher_type: alltoall needs CUDA streams; use allgather on CPU")
    out.update(
        num_moe_experts=cfg.num_moe_experts, moe_router_topk=cfg.moe_router_topk,
        moe_ffn_hidden_size=cfg.moe_ffn_hidden_size or _dense_ffn(cfg),
        moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
        moe_layer_freq=cfg.moe_layer_freq if isinstance(cfg.moe_layer_freq, int) else list(cfg.moe_layer_freq),
        moe_router_score_function=cfg.moe_router_score_function,
        moe_router_enable_expert_bias=cfg.moe_router_enable_expert_bias,
        moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
        moe_router_load_balancing_type="aux_loss" if cfg.moe_aux_loss_coeff > 0 else "none",
        moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
        # Routing in fp32 whatever the training dtype: with bf16 logits many experts tie and top-k turns noisy.
        moe_router_dtype="fp32",
        moe_grouped_gemm=False,  # SequentialMLP: the same checkpoint keys on CPU and with TE linears
    )
    return out


def _dense_ffn(cfg: LLMConfig) -> int:
    from omni_mega.models.llm import ffn_size

    return ffn_size(cfg)


def mla_config_kwargs(cfg: LLMConfig) -> dict:
    """MLATransformerConfig fields. Plain RoPE (`rope_type: rope`): the frequencies are ours (`models.llm.set_rotary`
    rewrites every layer's rotary module, so a stage's RoPE base change reaches MLA too)."""
    return dict(q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_head_dim=cfg.qk_head_dim,
                qk_pos_emb_head_dim=cfg.qk_pos_emb_head_dim, v_head_dim=cfg.v_head_dim, rope_type="rope",
                rotary_base=float(cfg.rotary_base), rotary_scaling_factor=1.0, kv_channels=None)


def mark_expert_params(model) -> int:
    """Marks every routed expert's parameters expert-parallel (megatron's `allreduce = False`) also at ep = 1, where
    megatron leaves them with the dense ones. Their gradients are then reduced over the expert data-parallel group,
    which at ep = 1 is the data-parallel group itself (same sum, same 1/dp scaling), and the optimizer keeps them in a
    sub-optimizer of their own at every EP size: a checkpoint's optimizer state has the same structure whatever EP
    wrote it, so a run saved at ep = 2 resumes at ep = 1 and back. Returns the number of parameters marked."""
    from megatron.core.transformer.moe.moe_layer import MoELayer

    n = 0
    for m in model.modules():
        if isinstance(m, MoELayer):
            for p in m.experts.parameters():
                p.allreduce = False
                n += 1
    return n


class OmniTopKRouter(TopKRouter):
    """megatron's TopKRouter with two differences for curricula:

    - `calculate_per_token_loss` follows the model config (megatron reads it once at construction, but the trainer
      sets it per stage from the objective; a stale value mis-scales the aux-loss gradient by the token count);
    - a frozen router (weight.requires_grad False) counts no tokens for its expert bias, so megatron's per-step bias
      update (`finalize_model_grads`: sign(mean - count) x rate) leaves the bias bitwise unchanged: frozen means
      frozen for the rule-updated bias too."""

    @property
    def calculate_per_token_loss(self) -> bool:
        return bool(self.config.calculate_per_token_loss)

    @calculate_per_token_loss.setter
    def calculate_per_token_loss(self, value) -> None:  # Router.__init__ assigns it; the config stays the source
        pass

    def _apply_expert_bias(self, routing_map, padding_mask=None):
        if self.weight.requires_grad:
            super()._apply_expert_bias(routing_map, padding_mask)


def llm_block_spec(cfg: LLMConfig, tcfg, vp_stage: int | None, *, te: bool):
    """TransformerBlockSubmodules for this pipeline chunk's layers: dense or MoE MLP per `moe_layer_freq`, standard
    or multi-latent attention. Without TE: our packed core attention and SP norms; with TE: megatron's TE specs."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    cpu_workarounds()
    pattern = cfg.moe_layers()
    n = get_num_layers_to_build(tcfg, vp_stage=vp_stage)
    first = get_transformer_layer_offset(tcfg, vp_stage=vp_stage)
    if te:
        from megatron.core.extensions.transformer_engine import TENorm

        specs = [_te_layer_spec(cfg, pattern[first + i]) for i in range(n)]
        return TransformerBlockSubmodules(layer_specs=specs, layer_norm=TENorm)
    from omni_mega.models.vision.norms import SPNorm

    specs = {moe: local_layer_spec(cfg, moe) for moe in set(pattern)}
    return TransformerBlockSubmodules(layer_specs=[specs[pattern[first + i]] for i in range(n)], layer_norm=SPNorm)


def _te_layer_spec(cfg: LLMConfig, moe: bool):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    spec = get_gpt_layer_with_transformer_engine_spec(
        num_experts=cfg.num_moe_experts if moe else None, moe_grouped_gemm=False,
        qk_layernorm=cfg.qk_layernorm or cfg.multi_latent_attention,
        multi_latent_attention=cfg.multi_latent_attention)
    if moe:
        spec.submodules.mlp.submodules.router = OmniTopKRouter
    return spec


def local_layer_spec(cfg: LLMConfig, moe: bool):
    """A TransformerLayer spec with local TP linears, SP norms and packed attention: `attention.layer_spec` with the
    MLP swapped for megatron's MoELayer (moe) and/or the attention for MLASelfAttention. Checkpoint keys follow the
    TE specs: in MoE layers the pre-MLP norm is a module of its own there (`pre_mlp_layernorm.weight`), so only the
    input norm is renamed into the attention's first linear (none under MLA, whose TE spec keeps it separate)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLPSubmodules
    from megatron.core.transformer.moe.experts import SequentialMLP
    from megatron.core.transformer.moe.moe_layer import MoELayer, MoESubmodules
    from megatron.core.transformer.moe.shared_experts import SharedExpertMLP
    from megatron.core.transformer.spec_utils import ModuleSpec

    from omni_mega.models.vision.attention import layer_spec

    base = layer_spec(causal=True, qk_layernorm=cfg.qk_layernorm)
    sub = base.submodules
    keys = dict(sub.sharded_state_dict_keys_map)
    if moe:
        linears = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
        mlp = ModuleSpec(module=MoELayer, submodules=MoESubmodules(
            experts=ModuleSpec(module=SequentialMLP, submodules=linears),
            shared_experts=ModuleSpec(module=SharedExpertMLP, submodules=linears), router=OmniTopKRouter))
        sub = dataclasses.replace(sub, mlp=mlp)
        keys.pop("pre_mlp_layernorm.")
    if cfg.multi_latent_attention:
        sub = dataclasses.replace(sub, self_attention=_mla_attention_spec(cfg))
        keys.pop("input_layernorm.")
    return ModuleSpec(module=base.module, submodules=dataclasses.replace(sub, sharded_state_dict_keys_map=keys))


def _mla_attention_spec(cfg: LLMConfig):
    """megatron's MLASelfAttention with local linears and our packed core attention; the compressed key/value (and
    query, with q_lora_rank) norms are always there (DeepSeek-V2/V3 and Moonlight have them; megatron's local spec
    adds them only with qk_layernorm)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.multi_latent_attention import MLASelfAttention, MLASelfAttentionSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec

    from omni_mega.models.vision.attention import PackedCoreAttention
    from omni_mega.models.vision.norms import SPNorm

    return ModuleSpec(module=MLASelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                      submodules=MLASelfAttentionSubmodules(
                          linear_q_proj=ColumnParallelLinear, linear_q_down_proj=ColumnParallelLinear,
                          linear_q_up_proj=ColumnParallelLinear, linear_kv_down_proj=ColumnParallelLinear,
                          linear_kv_up_proj=ColumnParallelLinear, core_attention=PackedCoreAttention,
                          linear_proj=RowParallelLinear, q_layernorm=SPNorm if cfg.q_lora_rank else IdentityOp,
                          kv_layernorm=SPNorm))


# ---- metrics ------------------------------------------------------------------------------------------------------
def step_metrics(chunks: list, num_microbatches: int) -> dict[str, float]:
    """{"moe_aux_loss": ...} after a training step's forward and backward passes: megatron's load-balancing loss
    (before its coefficient) averaged over the MoE layers, the micro-batches and the data-parallel ranks; {} for a
    model without MoE or without an aux loss. Collective over the whole world (every rank calls it); clears
    megatron's per-layer tracker for the next step."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    config = getattr(chunks[0], "module", chunks[0]).config
    if getattr(config, "num_moe_experts", None) is None or not config.moe_aux_loss_coeff:
        return {}
    entry = get_moe_layer_wise_logging_tracker().get(AUX_LOSS_NAME)
    values = entry["values"].detach().clone().double() if entry else torch.zeros(config.num_layers,
                                                                                 dtype=torch.float64)
    # Each pipeline rank holds its own layers' rows; under SP (and CP) a rank's loss covers its share of the tokens
    # (megatron's switch_load_balancing_loss_func sums over them), so those groups add; data-parallel ranks average.
    for group in (ps.get_pipeline_model_parallel_group(), ps.get_tensor_and_context_parallel_group(),
                  ps.get_data_parallel_group()):
        if torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
            torch.distributed.all_reduce(values, group=group)
    values /= max(1, ps.get_data_parallel_world_size())
    clear_aux_losses_tracker()
    moe_layers = sum(LLMConfigView(config).moe_layers())
    return {"moe_aux_loss": float(values.sum()) / max(1, moe_layers) / max(1, num_microbatches)}


class LLMConfigView:
    """`LLMConfig.moe_layers` on a megatron TransformerConfig (its moe_layer_freq int or 0/1 list)."""

    def __init__(self, tcfg) -> None:
        self.tcfg = tcfg

    def moe_layers(self) -> list[bool]:
        f, n = self.tcfg.moe_layer_freq, self.tcfg.num_layers
        return [i % f == 0 for i in range(n)] if isinstance(f, int) else [bool(x) for x in f]
