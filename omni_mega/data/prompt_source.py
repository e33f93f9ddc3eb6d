"""`PromptSource`: the data source of a GRPO stage, prompts with verifiable answers (conversation shards of kind
`prompts`). The objective turns each step's prompts into rollouts and packs those itself; this source only says which
prompts a rank answers at a step, and reads them.

Order: prompt g of the stage is the g-th draw of a `BlendSampler` over the stage's prompt datasets (weights, epoch
permutations, seeded by the data seed and the stage), so any step's prompts follow from the step alone. A step
answers `global_batch_size` prompts (dealt to data-parallel ranks in order); with `ppo_epochs` k, k consecutive steps
answer the same prompts (the objective trains k times on one rollout batch). Resume state: the consumed count.

A prompt (one dict per prompt, CPU): `prompt_ids` int64 [L] (images expanded into their placeholders at the stage's
resolution), `pixel_values` / `grid_thw` (or None), `answer` (str), `key` (dataset, item), `stop_id` (the template's
end of turn), `tokenizer` (the dataset's recorded tokenizer, for decoding), `stats`.
"""

from __future__ import annotations

import numpy as np

from omni_mega.data import packing as mp
from omni_mega.data.blend import BlendSchedule
from omni_mega.data.conversations.shards import IMAGE_MARK
from omni_mega.data.sampler import BlendSampler


class PromptSource:
    def __init__(self, spec, datasets: list, weights: list[float], consumed_samples: int, *, global_batch: int,
                 ppo_epochs: int = 1) -> None:
        for ds in datasets:
            if getattr(ds, "kind", None) != "prompts":
                raise ValueError(f"objective grpo: dataset {getattr(ds, 'path', ds)} holds {getattr(ds, 'kind', '?')} "
                                 "samples, not prompts (tools/preprocess_conversations.py --kind prompts)")
            if "end_of_turn" not in ds.tokenizer:
                raise ValueError(f"objective grpo: dataset {ds.path} records no end-of-turn id (preprocessed with a "
                                 "Jinja template?): rollouts would not know where to stop")
        self.spec, self.datasets, self.weights = spec, list(datasets), list(weights)
        self.consumed_samples, self.global_batch, self.ppo_epochs = int(consumed_samples), global_batch, ppo_epochs
        self.mm_sets = self.datasets  # what the trainer sizes objective tables by
        self._cursor_sampler, self._at = self._sampler(), 0  # the stream's draws so far (planning only)

    def _sampler(self) -> BlendSampler:
        names = [f"p{i}" for i in range(len(self.datasets))]
        return BlendSampler(BlendSchedule.constant(dict(zip(names, self.weights))),
                            {n_: len(d) for n_, d in zip(names, self.datasets)},
                            seed=(self.spec.seed * 1_000_003 + self.spec.stage_index * 1009 + 7) % 2**62)

    def _draws(self, first: int, n: int) -> list[tuple[int, int]]:
        """Draws first .. first + n - 1 of the stage's prompt stream as (dataset, item). The sampler moves forward
        only; asking for earlier draws replays it from the stage start (cheap: no data is read)."""
        if first < self._at:
            self._cursor_sampler, self._at = self._sampler(), 0
        while self._at < first:
            self._cursor_sampler.next()
            self._at += 1
        out = [self._cursor_sampler.next() for _ in range(n)]
        self._at += n
        return [(int(name[1:]), int(i)) for name, i in out]

    def plan_step(self, sl, ahead: int = 0) -> list[tuple[int, int]]:
        step = (self.consumed_samples - self.spec.stage_start) // self.global_batch + ahead
        batch = step // self.ppo_epochs  # the rollout batch this step trains on
        per_rank = self.global_batch // sl.dp
        return self._draws(batch * self.global_batch + sl.dp_rank * per_rank, per_rank)

    def materialize(self, plan: list[tuple[int, int]]) -> list[dict]:
        from omni_mega.data.images import decode_and_pack

        sp, out = self.spec, []
        for k, i in plan:
            ds = self.datasets[k]
            rec = ds[i]
            ids = np.asarray(rec.sequences[0].ids, dtype=np.int64)
            px = grid = None
            if rec.images:
                packed, kept, _ = decode_and_pack(rec.images, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                                  temporal_patch_size=sp.temporal_patch_size,
                                                  min_pixels=sp.min_pixels, max_pixels=sp.max_pixels,
                                                  backend="pillow", num_threads=1)
                if len(kept) != len(rec.images):
                    raise ValueError(f"prompt {rec.key} of {ds.path}: an image was rejected at decode time")
                px, grid = packed.pixel_values, packed.grid_thw
                visual = [int(g.prod()) // sp.merge_size ** 2 for g in grid]
                ids, _ = mp.conv_sequence_tokens(ids, np.zeros(len(ids), np.uint8), visual, image_mark=IMAGE_MARK,
                                                 image_token_id=sp.image_token_id)
            out.append({"prompt_ids": ids, "pixel_values": px, "grid_thw": grid, "answer": rec.meta["answer"],
                        "key": (k, i), "stop_id": int(ds.tokenizer["end_of_turn"]), "tokenizer": ds.tokenizer,
                        "stats": {"prompts": 1}})
        return out

    def step_metrics(self, stats: dict[str, int]) -> dict:
        return {"prompts": stats.get("prompts", 0)}

    def advance(self, samples: int) -> None:
        self.consumed_samples += int(samples)

    def state_dict(self) -> dict:
        return {"kind": "prompts", "consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "prompts":
            raise ValueError(f"PromptSource.load_state_dict: not a prompt-source state: {sorted(state)}")
        self.consumed_samples = int(state["consumed_samples"])
