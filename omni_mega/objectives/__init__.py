"""Training objectives: one module per objective, each giving megatron's schedules a forward step and a loss.

A stage names its objective in YAML (`objective: lm`); the trainer asks `build(plan.objective)` once per stage and
never asks what it trains. A new objective is a new module here (and, where it needs one, a data source kind).
"""

from __future__ import annotations

from omni_mega.objectives.base import Objective, StageContext
from omni_mega.objectives.contrastive import ContrastiveObjective
from omni_mega.objectives.classify import ClassifyObjective
from omni_mega.objectives.ctc import CTCObjective
from omni_mega.objectives.dpo import DPOObjective
from omni_mega.objectives.grpo import GRPOObjective
from omni_mega.objectives.lm import LMObjective
from omni_mega.objectives.rvq import RVQObjective
from omni_mega.objectives.sft import SFTObjective
from omni_mega.objectives.talker import TalkerObjective

OBJECTIVES: dict[str, type] = {"lm": LMObjective, "sft": SFTObjective, "dpo": DPOObjective, "grpo": GRPOObjective}
OBJECTIVES["contrastive"] = ContrastiveObjective  # ViT pre-training: SigLIP / CLIP + CoCa captioning
# Parts trained alone (the μOmni stages): audio encoder (ctc), ViT (classify), codec (rvq), Talker (talker).
OBJECTIVES.update({"ctc": CTCObjective, "classify": ClassifyObjective, "rvq": RVQObjective, "talker": TalkerObjective})


def build(plan) -> Objective:
    """The objective a stage plan names (`plan.objective`), configured from the plan."""
    if plan.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {plan.objective!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[plan.objective](plan)


__all__ = ["OBJECTIVES", "Objective", "StageContext", "build"]
