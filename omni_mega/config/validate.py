"""Rules that span config sections or need the world size; run before any compute."""

from __future__ import annotations

from omni_mega.config.checks import ConfigError
from omni_mega.config.schema import RunConfig
from omni_mega.config.stage import AUDIO_SOURCES, PART_OBJECTIVES


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
    if cfg.model.vit is not None and par.tp > 1 and cfg.model.vit.num_attention_heads % par.tp:
        raise ConfigError(
            f"parallel.tp: tp={par.tp} does not divide model.vit.num_attention_heads={cfg.model.vit.num_attention_heads}"
        )
    _validate_moe(cfg, world_size)
    _validate_stages(cfg, world_size)
    _validate_parts(cfg)
    if world_size is not None:
        model_parallel = par.tp * par.pp * par.cp
        if world_size % model_parallel:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tp x pp x cp = {par.tp} x {par.pp} x {par.cp} "
                f"= {model_parallel}; use a multiple of {model_parallel} processes or change the layout"
            )
        if world_size % (par.tp * par.ep * par.pp):
            raise ConfigError(f"parallel.ep: world size {world_size} is not divisible by tp x ep x pp = {par.tp} x "
                              f"{par.ep} x {par.pp} = {par.tp * par.ep * par.pp} (experts split over ep data-parallel "
                              "ranks); change ep or the number of processes")
        dp = world_size // model_parallel
        if data.global_batch_size % (data.micro_batch_size * dp):
            raise ConfigError(
                f"data.global_batch_size: {data.global_batch_size} is not divisible by micro_batch_size x dp = "
                f"{data.micro_batch_size} x {dp}"
            )


def _validate_moe(cfg: RunConfig, world_size: int | None) -> None:
    """Mixture of experts, expert parallelism and multi-latent attention against the layout."""
    llm, par = cfg.model.llm, cfg.parallel
    if llm.num_moe_experts is None:
        if par.ep > 1:
            raise ConfigError(f"parallel.ep: ep={par.ep} splits experts, but model.llm.num_moe_experts is null (a "
                              "dense model); set ep: 1 or configure experts")
    else:
        if llm.num_moe_experts % par.ep:
            raise ConfigError(f"parallel.ep: ep={par.ep} does not divide model.llm.num_moe_experts="
                              f"{llm.num_moe_experts}; choose ep from {_divisors(llm.num_moe_experts)}")
        if par.tp > 1 and not par.sp:
            raise ConfigError(f"parallel.sp: megatron's MoE layers train with tp={par.tp} only under sequence "
                              "parallelism; set sp: true")
    if llm.multi_latent_attention:
        if llm.rope_scaling is not None:
            raise ConfigError("model.llm.rope_scaling: not supported with multi_latent_attention (plain RoPE only)")
        width = llm.kv_lora_rank + llm.qk_pos_emb_head_dim
        if width % par.tp:
            raise ConfigError(f"parallel.tp: tp={par.tp} does not divide kv_lora_rank + qk_pos_emb_head_dim = {width}")


def _validate_stages(cfg: RunConfig, world_size: int | None) -> None:
    """Per-stage rules, on the stage plan's effective values: group names, lengths vs schedules, sequence lengths,
    batch sizes and resolution bounds."""
    from omni_mega.config.groups import check_group_name, model_groups
    from omni_mega.config.plan import plan_stages

    llm, data = cfg.model.llm, cfg.data
    known = model_groups(cfg.model)
    dp = cfg.parallel.data_parallel_size(world_size) if world_size else None
    for plan in plan_stages(cfg):
        s, p = plan.cfg, f"stages[{plan.name}]"
        mm = [d.name for d in plan.mix if d.multimodal]
        if mm and cfg.model.vit is None:
            raise ConfigError(f"{p}.data: image-text datasets {mm} need a vision model; set model.vit and "
                              "model.connector or drop them from the mix")
        indexed = [d.name for d in plan.mix if d.source == "indexed"]
        if indexed and llm.vocab_size is None:
            raise ConfigError(f"model.llm.vocab_size: stage {plan.name!r} reads indexed datasets {indexed}, whose "
                              "files do not record the tokenizer; set the tokenizer's vocabulary size")
        if plan.min_pixels > plan.max_pixels:
            raise ConfigError(f"{p}.min_pixels: {plan.min_pixels} is above max_pixels={plan.max_pixels}")
        for g in plan.trainable:
            try:
                check_group_name(g, known)
            except ValueError as e:
                raise ConfigError(f"{p}.trainable: {e}") from None
        _validate_contrastive(cfg, plan, p)
        if plan.objective == "grpo" and cfg.parallel.vpp is not None:
            raise ConfigError(f"{p}.objective: grpo generates its rollouts with the training model, one model chunk "
                              "per rank: drop parallel.vpp (tensor and pipeline parallelism work)")
        if plan.index == 0 and s.schedule == "resume":
            raise ConfigError(f"{p}.schedule: the first stage has no previous schedule to resume; use new")
        if s.schedule == "resume" and any(getattr(s, k) is not None for k in ("lr", "min_lr", "warmup_steps", "decay")):
            raise ConfigError(f"{p}.schedule: resume continues the previous stage's schedule; drop lr/min_lr/"
                              "warmup_steps/decay here or use schedule: rewarmup")
        lr = s.lr if s.lr is not None else cfg.optim.lr
        min_lr = s.min_lr if s.min_lr is not None else cfg.optim.min_lr
        if not 0 <= min_lr <= lr:
            raise ConfigError(f"{p}.min_lr: must be in [0, lr={lr}], got {min_lr}")
        if s.warmup_steps is not None and s.warmup_steps < 0:
            raise ConfigError(f"{p}.warmup_steps: must be >= 0, got {s.warmup_steps}")
        if s.decay_steps is not None and s.decay_steps < 1:
            raise ConfigError(f"{p}.decay_steps: must be >= 1, got {s.decay_steps}")
        if plan.seq_length > llm.max_position_embeddings and plan.objective not in PART_OBJECTIVES:  # LLM positions
            raise ConfigError(f"{p}.seq_length: {plan.seq_length} exceeds model.llm.max_position_embeddings="
                              f"{llm.max_position_embeddings}")
        if cfg.parallel.sp and plan.seq_length * plan.micro_batch_size % cfg.parallel.tp:
            raise ConfigError(f"{p}.seq_length: seq_length x micro_batch_size = {plan.seq_length} x "
                              f"{plan.micro_batch_size} must be divisible by tp={cfg.parallel.tp} with sequence "
                              "parallelism")
        gbs, mbs = plan.global_batch_size, plan.micro_batch_size
        if gbs % mbs:
            raise ConfigError(f"{p}.global_batch_size: {gbs} is not a multiple of data.micro_batch_size={mbs}")
        if dp and gbs % (mbs * dp):
            raise ConfigError(f"{p}.global_batch_size: {gbs} is not divisible by micro_batch_size x dp = "
                              f"{mbs} x {dp}")


def _validate_contrastive(cfg: RunConfig, plan, p: str) -> None:
    """A contrastive stage trains the ViT and its towers on image-text samples, on one pipeline stage; no other
    objective uses the towers."""
    from omni_mega.config.groups import CONTRASTIVE_GROUPS, parse_group

    bases = [parse_group(g).base for g in plan.trainable]
    if plan.objective != "contrastive":
        towers = [g for g, b in zip(plan.trainable, bases) if b in CONTRASTIVE_GROUPS]
        if towers:
            raise ConfigError(f"{p}.trainable: {towers} are trained only by objective contrastive; objective "
                              f"{plan.objective} never uses them")
        return
    if cfg.model.vit is None or cfg.model.contrastive is None:
        raise ConfigError(f"{p}.objective: contrastive needs model.vit and model.contrastive (the text tower and "
                          "caption decoder)")
    if cfg.parallel.pp > 1:
        raise ConfigError(f"{p}.objective: contrastive runs the ViT and its towers on one pipeline stage; use "
                          f"parallel.pp 1 (got {cfg.parallel.pp})")
    text = [d.name for d in plan.mix if not d.multimodal]
    if text:
        raise ConfigError(f"{p}.data: objective contrastive reads image-text samples; {text} are not image-text "
                          "datasets")
    unused = [g for g, b in zip(plan.trainable, bases) if not (b in CONTRASTIVE_GROUPS or b.startswith("vit"))]
    if unused:
        raise ConfigError(f"{p}.trainable: {unused} get no gradient from objective contrastive (it trains vit and "
                          f"{', '.join(CONTRASTIVE_GROUPS)})")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


PARTS_TRAINED = {"ctc": ("audio",), "classify": ("vit", "classifier"), "rvq": ("codec",),
                   "talker": ("codec", "talker")}
PART_SOURCES = {"ctc": ("demo_audio", "audio_shards"), "rvq": ("demo_audio", "audio_shards"),
                "talker": ("demo_audio", "audio_shards"), "classify": ("demo_shapes", "mm_shards")}


def _validate_parts(cfg: RunConfig) -> None:
    """Rules of the audio, speech and classifier parts and the stages that train them alone."""
    m, par = cfg.model, cfg.parallel
    for name in ("audio", "talker"):
        part = getattr(m, name)
        if part is not None and par.tp > 1 and part.num_attention_heads % par.tp:
            raise ConfigError(f"parallel.tp: tp={par.tp} does not divide model.{name}.num_attention_heads="
                              f"{part.num_attention_heads}")
    for s in cfg.stages:
        p = f"stages[{s.name}]"
        for d in s.data:
            if d.source == "audio_shards" and not d.path:
                raise ConfigError(f"{p}.data[{d.name}].path: audio_shards datasets need a path")
            if d.source in AUDIO_SOURCES and m.audio is None and s.objective not in PART_OBJECTIVES:
                raise ConfigError(f"{p}.data[{d.name}]: audio datasets need an audio encoder; set model.audio")
        if s.objective not in PART_OBJECTIVES:
            if any(d.source == "demo_shapes" for d in s.data):
                raise ConfigError(f"{p}.data: demo_shapes (labelled images) is for objective: classify")
            continue
        missing = [part for part in PARTS_TRAINED[s.objective] if getattr(m, part) is None]
        if missing:
            raise ConfigError(f"{p}.objective: {s.objective} trains model.{missing[0]}, which the config does not "
                              f"have; set model.{missing[0]}")
        if par.pp > 1 or par.vpp is not None or par.cp > 1:
            raise ConfigError(f"{p}.objective: {s.objective} trains one part alone, which lives on one pipeline "
                              f"stage: run it with pp=1 and cp=1 (a stage graph runs it as its own job)")
        wrong = [d.name for d in s.data if d.source not in PART_SOURCES[s.objective]]
        if wrong or not s.data:
            raise ConfigError(f"{p}.data: objective {s.objective} reads {' or '.join(PART_SOURCES[s.objective])} "
                              f"datasets, got {wrong or 'none (name them in the stage)'}")
        if s.multimodal_ratio is not None:
            raise ConfigError(f"{p}.multimodal_ratio: objective {s.objective} packs one kind of item; drop it")

