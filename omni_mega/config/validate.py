"""Rules that span config sections or need the world size; run before any compute."""

from __future__ import annotations

from omni_mega.config.schema import ConfigError, RunConfig


def validate(cfg: RunConfig, world_size: int | None = None) -> None:
    """Raises ConfigError naming the field and the fix for the first broken rule."""
    llm, par, data = cfg.model.llm, cfg.parallel, cfg.data
    if llm.num_attention_heads % par.tp:
        raise ConfigError(
            f"parallel.tp: tp={par.tp} does not divide model.llm.num_attention_heads={llm.num_attention_heads}; "
            f"choose tp from {_divisors(llm.num_attention_heads)}"
        )
    groups = llm.num_query_groups or llm.num_attention_heads
    if groups % par.tp:
        raise ConfigError(f"parallel.tp: tp={par.tp} does not divide model.llm.num_query_groups={groups}")
    chunks = par.pp * (par.vpp or 1)
    if chunks > llm.num_layers:
        raise ConfigError(
            f"parallel.pp: pp={par.pp} x vpp={par.vpp or 1} = {chunks} pipeline chunks is larger than "
            f"model.llm.num_layers={llm.num_layers}; lower pp or add layers"
        )
    if llm.num_layers % chunks:
        raise ConfigError(
            f"parallel.pp: model.llm.num_layers={llm.num_layers} must be divisible by pp x vpp = {chunks}"
        )
    if data.seq_length > llm.max_position_embeddings:
        raise ConfigError(
            f"data.seq_length: {data.seq_length} exceeds model.llm.max_position_embeddings={llm.max_position_embeddings}"
        )
    if par.sp and data.seq_length % par.tp:
        raise ConfigError(f"data.seq_length: {data.seq_length} must be divisible by tp={par.tp} with sequence parallelism")
    if cfg.model.vit is not None and par.tp > 1 and cfg.model.vit.num_attention_heads % par.tp:
        raise ConfigError(
            f"parallel.tp: tp={par.tp} does not divide model.vit.num_attention_heads={cfg.model.vit.num_attention_heads}"
        )
    if world_size is not None:
        model_parallel = par.tp * par.pp * par.cp
        if world_size % model_parallel:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tp x pp x cp = {par.tp} x {par.pp} x {par.cp} "
                f"= {model_parallel}; use a multiple of {model_parallel} processes or change the layout"
            )
        dp = world_size // model_parallel
        if data.global_batch_size % (data.micro_batch_size * dp):
            raise ConfigError(
                f"data.global_batch_size: {data.global_batch_size} is not divisible by micro_batch_size x dp = "
                f"{data.micro_batch_size} x {dp}"
            )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
