"""What the part-training objectives (ctc, classify, rvq, talker) share: the held-out pass and how its numbers reach
metrics.jsonl, edit distances, and text from token ids.

Held-out scoring: at the stage start the objective builds the held-out micro-batches once (`data.task_source.
heldout_batches`: the first `eval.samples` items of the held-out split); every `eval.interval` steps (and at
the stage's first and last steps) `before_step` runs them forward only through megatron's schedule
(`StageContext.forward_only`) and keeps the sums. The training loss_func then reports them in the first micro-batch
of each step as [sum, count] pairs, like every value (summed over data-parallel ranks, which all score the same
held-out items: the ratio is the same), with `eval_step`, the step they were measured at.
"""

from __future__ import annotations

import logging

import torch

from omni_mega.objectives.base import StageContext, metric

log = logging.getLogger(__name__)


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def decoder_of(identity: dict | None):
    """ids -> text for a dataset's recorded tokenizer: bytes for the byte tokenizer, the HF tokenizer.json's decode,
    else the ids themselves joined by spaces (then WER counts tokens)."""
    kind = (identity or {}).get("kind")
    if kind == "byte":
        return lambda ids: bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")
    if kind == "HuggingFaceTokenizer" and identity.get("tokenizer_model"):
        from omni_mega.data.text.tokenizer import HuggingFaceTokenizer

        tok = HuggingFaceTokenizer(identity["tokenizer_model"])
        return lambda ids: tok.decode([int(i) for i in ids])
    return lambda ids: " ".join(str(int(i)) for i in ids)


class HeldOut:
    """Held-out micro-batches and the latest sums of a scoring pass."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names  # the [sum, count] values the scoring loss_func reports
        self.batches: list[dict] | None = None
        self.dataset = None
        self.sums: dict[str, tuple[float, float]] = {}
        self.step = 0
        self._first = False

    def prepare(self, ctx: StageContext) -> bool:
        """Builds the held-out micro-batches; False when the stage has no held-out split."""
        from omni_mega.data.task_source import heldout_batches

        got = heldout_batches(ctx.plan, ctx.model_config, ctx.data_dir or ctx.run_dir / "data",
                              limit=ctx.plan.cfg.eval.samples)
        if got is None:
            log.info("stage %s: no held-out split (set eval.heldout): held-out metrics are not reported",
                     ctx.plan.name)
            return False
        self.batches, self.dataset = got
        return True

    def before_step(self, ctx: StageContext, forward_step) -> None:
        """Scores the held-out batches when due (the stage's first step in this process, every interval-th step
        of the stage and its last step, before that step's update); arms the report for this step's first
        micro-batch."""
        if self.batches is None:
            return
        k = ctx.step - ctx.plan.start_step
        # The stage's last step scores too, so its final record describes the trained part (with interval 20 of
        # 40 steps the codec's last held-out usage was measured at step 20: 0.5, while its training usage had
        # reached ~0.85).
        last = k == ctx.plan.steps - 1
        if k % ctx.plan.cfg.eval.interval == 0 or last or not self.sums:
            sums = {n: [0.0, 0.0] for n in self.names}
            for d in ctx.forward_only(self.batches, forward_step, None):
                for n in self.names:
                    if n in d:
                        s, c = d[n].double().cpu().tolist()
                        sums[n][0] += s
                        sums[n][1] += c
            self.sums, self.step = {n: tuple(v) for n, v in sums.items()}, ctx.step
        self._first = True

    def values(self, device) -> dict:
        """The held-out pairs for this micro-batch's dict: the latest sums in a step's first micro-batch, [0, 0]
        in the others (so a step's values count them once per rank)."""
        if self.batches is None:
            return {}
        first, self._first = self._first, False
        out = {n: metric(torch.tensor(self.sums[n][0] if first else 0.0, device=device),
                         self.sums[n][1] if first else 0.0) for n in self.names}
        out["eval_step"] = metric(torch.tensor(float(self.step) if first else 0.0, device=device),
                                  1.0 if first else 0.0)
        return out
