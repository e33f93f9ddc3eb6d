"""Layer specs: TransformerEngine when it imports (GPU clusters), megatron's local spec otherwise (CPU, no TE).

The backend is chosen by spec, not by if-branches inside modules (megatron-core's ModuleSpec pattern)."""

from __future__ import annotations

from megatron.core.transformer.spec_utils import ModuleSpec

from omni_mega.runtime.capabilities import probe


def gpt_layer_spec(normalization: str, *, use_te: bool | None = None) -> ModuleSpec:
    use_te = probe().te if use_te is None else use_te
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(normalization=normalization)
