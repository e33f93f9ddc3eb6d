"""Checks and helpers for starting from a checkpoint: model-shape compatibility (a clear error before training)
and the base a `trainable_only` checkpoint is applied on."""

from __future__ import annotations

import logging
from pathlib import Path

from omni_mega.config import ConfigError, RunConfig, to_dict
from omni_mega.training import checkpoint as ckpt_io
from omni_mega.training.state import TrainerState

log = logging.getLogger(__name__)

# Fields that change parameter shapes or names; rotary_base, dropout and init do not.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                "vocab_size", "normalization", "activation", "untie_embeddings")


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


def restore_partial_base(trainer, plan, ckpt: Path) -> None:
    """A `trainable_only` checkpoint holds only the stage's trainable parameters; the frozen ones are what the stage
    started with: the newest complete full checkpoint at or before the stage start (or the initialisation when the
    stage starts the run), then the stage's `init_from` on top."""
    good, _ = ckpt_io.candidates(trainer.run_dir)
    base = next((c for c in good if (s := ckpt_io.read_state(c)).save == "full" and s.step <= plan.start_step), None)
    if base is not None:
        ckpt_io.load_checkpoint(base, trainer.model, trainer.optimizer, with_optimizer=False)
        src = str(base)
    elif plan.start_step == 0:
        src = "the initialisation (seeded)"
    else:
        src = "the initialisation (no full checkpoint at or before the stage start was found)"
        log.warning("resume: %s is trainable_only and %s; frozen parameters start from the initialisation", ckpt, src)
    if plan.cfg.init_from:
        trainer._init_from(plan)
        src += f" + init_from {plan.cfg.init_from}"
    if trainer.rt.is_rank0:
        have, miss = ckpt_io.loaded_names(trainer.model, ckpt)
        log.info("resume from partial checkpoint %s: %d trainable tensors from it, %d frozen from %s",
                 ckpt, len(have), len(miss), src)
