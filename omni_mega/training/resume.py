"""Starting from a checkpoint: which one (`--resume auto` or a path), whether it fits this config (model shape and
stages, a clear error before step 1), and the base a `trainable_only` checkpoint is applied on."""

from __future__ import annotations

import logging
from pathlib import Path

from omni_mega.config import ConfigError, RunConfig, to_dict
from omni_mega.config.plan import StagePlan
from omni_mega.training import checkpoint as ckpt_io
from omni_mega.training.state import TrainerState

log = logging.getLogger(__name__)

# Fields that change parameter shapes or names; rotary_base, dropout and init do not.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "ffn_hidden_size",
                "vocab_size", "normalization", "activation", "add_qkv_bias", "qk_layernorm", "untie_embeddings")


def check_model_shape(saved: TrainerState, cfg: RunConfig, where: str) -> None:
    """Raises ConfigError naming `where` and each differing model field."""
    old = saved.model.get("llm", {})
    new = to_dict(cfg.model)["llm"]
    diffs = [f"model.llm.{k}: checkpoint {old.get(k)!r}, config {new.get(k)!r}" for k in SHAPE_FIELDS
             if k in old and old.get(k) != new.get(k)]
    for part in ("vit", "connector"):
        if saved.model and (saved.model.get(part) is None) != (to_dict(cfg.model).get(part) is None):
            diffs.append(f"model.{part}: present in {'config' if saved.model.get(part) is None else 'checkpoint'} only")
    if diffs:
        raise ConfigError(f"{where}: the checkpoint was written by another model shape: " + "; ".join(diffs))


def check_stages(saved: TrainerState, plans: list[StagePlan], where: str) -> None:
    """Raises ConfigError unless the checkpoint's stage exists in this config under the same name and index, and its
    step lies inside that stage (a config with fewer or reordered stages cannot continue the run)."""
    i = saved.stage_index
    if i >= len(plans):
        raise ConfigError(f"{where}: the checkpoint was written in stage {i + 1} ({saved.stage_name!r}) but the "
                          f"config has {len(plans)} stage(s): {', '.join(p.name for p in plans)}")
    plan = plans[i]
    if saved.stage_name and saved.stage_name != plan.name:
        raise ConfigError(f"{where}: the checkpoint's stage {i + 1} is {saved.stage_name!r} but the config's is "
                          f"{plan.name!r}")
    if not plan.start_step <= saved.step <= plan.end_step:
        raise ConfigError(f"{where}: the checkpoint is at step {saved.step}, outside stage {plan.name!r} (steps "
                          f"{plan.start_step + 1}-{plan.end_step}) of this config: were stage lengths changed?")


def pick(run_dir: Path, resume: str | None, cfg: RunConfig, plans: list[StagePlan], *,
         announce: bool) -> list[Path]:
    """Checkpoints to try, best first: [] for a fresh start; `--resume PATH` -> that one; `--resume auto` -> the
    complete checkpoints of the run dir, newest first (older ones are fallbacks when a newer one fails to load).
    Every candidate is checked against the config (shape, stages) before step 1."""
    if resume is None:
        return []
    if resume != "auto":
        path = ckpt_io.resolve_ckpt(resume)
        good, where = [path], f"--resume {path}"
    else:
        good, skipped = ckpt_io.candidates(run_dir)
        if announce:
            for line in skipped:
                log.warning("resume: skipping %s", line)
        if not good:
            if announce:
                log.info("resume auto: no complete checkpoint in %s, starting from step 0", run_dir / "ckpt")
            return []
        where = f"--resume auto ({good[0]})"
    saved = ckpt_io.read_state(good[0])
    check_model_shape(saved, cfg, where)
    check_stages(saved, plans, where)
    return good


def partial_base(run_dir: Path, plan: StagePlan, ckpt: Path, model: list, optimizer) -> str:
    """A `trainable_only` checkpoint holds only the stage's trainable parameters; the frozen ones are what the stage
    started with: the newest complete full checkpoint at or before the stage start (or the initialisation when the
    stage starts the run). Loads it (weights only) and says where the frozen parameters came from; the caller then
    applies the stage's `init_from` on top."""
    good, _ = ckpt_io.candidates(run_dir)
    base = next((c for c in good if (s := ckpt_io.read_state(c)).save == "full" and s.step <= plan.start_step), None)
    if base is not None:
        ckpt_io.load_checkpoint(base, model, optimizer, with_optimizer=False)
        return str(base)
    if plan.start_step == 0:
        return "the initialisation (seeded)"
    src = "the initialisation (no full checkpoint at or before the stage start was found)"
    log.warning("resume: %s is trainable_only and %s; frozen parameters start from the initialisation", ckpt, src)
    return src
