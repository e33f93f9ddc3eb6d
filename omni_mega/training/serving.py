"""A checkpoint's model, ready to answer: what `omni-mega generate` and `omni-mega eval` start from.

Builds the model of a checkpoint (trainer step dir, run dir, or `import-hf` output) at TP = the number of
processes and PP = 1 (generation needs the whole model in one chunk per rank; dist checkpoints reshard from any
layout) and loads its weights. A `trainable_only` checkpoint is refused: it lacks the frozen weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omni_mega.config import ModelConfig, ParallelConfig


@dataclass
class Loaded:
    step_dir: Path
    cfg: ModelConfig
    meta: dict  # interop.json of an imported checkpoint ({} for a trainer's)
    model: torch.nn.Module
    padded_vocab: int  # rows of the embedding (the vocabulary padded for TP)
    rank0: bool


def load_for_inference(ckpt: str | Path, seed: int = 0) -> Loaded:
    """Raises ValueError / InteropError (one line each) for a path that holds no usable checkpoint."""
    from omni_mega.interop.convert import read_checkpoint_info, resolve_step_dir
    from omni_mega.interop.dcp import tensor_metadata
    from omni_mega.models.factory import build_model
    from omni_mega.runtime import init_distributed
    from omni_mega.runtime.env import detect
    from omni_mega.training import checkpoint as ckpt_io

    step = resolve_step_dir(ckpt)
    cfg, meta = read_checkpoint_info(step)
    emb = ("llm." if cfg.vit is not None else "") + "embedding.word_embeddings.weight"
    stored = tensor_metadata(step / "dist")
    if emb not in stored:
        raise ValueError(f"{step}: no language model in this checkpoint (a vision tower alone cannot generate)")
    padded = stored[emb][0][0]
    parallel = ParallelConfig(tp=detect().world_size)
    rt = init_distributed(parallel, seed=seed)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = build_model(cfg, parallel, padded, cfg.llm.max_position_embeddings, dtype).to(rt.device)
    _, miss = ckpt_io.loaded_names([model], step)
    if miss:
        raise ValueError(f"{step}: the checkpoint lacks {len(miss)} parameter(s), e.g. {miss[0]} (a trainable_only "
                         "checkpoint? use a full one)")
    ckpt_io.load_checkpoint(step, [model], None, with_optimizer=False)
    return Loaded(step, cfg, meta, model, padded, rt.is_rank0)
