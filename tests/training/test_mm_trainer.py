"""Joint multimodal curriculum through the real Trainer on CPU (one process, TP=PP=1): a text stage with the vision
tower frozen, then a joint stage whose multimodal token share ramps up with only the last ViT layer, the visual
head and the VET trainable. Checks: losses finite and falling, realized mm_ratio rising with the target, frozen
vision parameters bitwise unchanged, trainable ones changed, and exact resume (same per-step losses) from the
checkpoint at the stage boundary and from one inside the joint stage.

Two data sources, each test runs on both:
- "fake": `FakePackedSource`, a small in-test implementation of the packed BatchSource contract (one image-text
  sample sized to the target share per pack), so the trainer's statistics can be checked exactly;
- "shards": the real `omni_mega.data.source` source over a small demo dataset in the real shard format
  (`build_demo_data(num_train=48)`, read as `mm_shards`), which also checks that its saved state resumes exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from omni_mega.config import load_config
from omni_mega.data.demo import text as demo_text
from omni_mega.data.packed_source import step_record

IMG = 300  # image placeholder id (outside the 257 byte ids)
SEQ = 48
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
BASE = [
    "name=mm_test", "train.tensorboard=false", "train.log_interval=1",
    "model.llm={num_layers: 2, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 64}",
    "model.vit={num_layers: 2, hidden_size: 32, num_attention_heads: 2, patch_size: 14, merge_size: 2}",
    f"model.connector={{kind: vet, visual_vocab_size: 64, num_indicators: 0, image_token_id: {IMG}}}",
    f"data={{seq_length: {SEQ}, micro_batch_size: 1, global_batch_size: 2, max_pixels: 6272, pack_window: 6}}",
    "optim={lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 1}",
]
STAGES = ("stages=[{{name: text, steps: 3, trainable: [llm], data: [{{name: t, source: demo_text, seed: 1}}]}},"
          " {{name: joint, steps: 4, ckpt_interval: 2, schedule: rewarmup, warmup_steps: 1,"
          "  trainable: [llm, 'vit.layers[-1:]', visual_head, vet], multimodal_ratio: {r0}, multimodal_ratio_end: {r1},"
          "  data: [{{name: t, source: demo_text, seed: 1}}, {{name: shapes, {mm}}}]}}]")


def _config(kind: str, shards=None) -> list[str]:
    if kind == "fake":
        return BASE + [STAGES.format(r0=0.2, r1=0.8, mm="source: demo_mm")]
    return BASE + [STAGES.format(r0=0.0, r1=1.0, mm=f"source: mm_shards, path: '{shards}'")]


def text_window(g: int, n: int) -> torch.Tensor:
    """n + 1 byte tokens of the demo corpus from a start drawn from (seed, g)."""
    corpus = torch.as_tensor(np.concatenate([np.append(d, demo_text.EOD) for d in demo_text._topic_docs()]))
    start = int(torch.randint(0, corpus.numel() - n - 1, (1,), generator=torch.Generator().manual_seed(g)))
    return corpus[start:start + n + 1]


class FakePackedSource:
    """Packs of `plan.seq_length` tokens: pack g holds (when the stage's share at g is > 0) one image-text sample
    `[IMG] * n_vis + [SEP] + colour name + [EOD]` sized so its tokens are about that share of the pack, then a text
    window, then padding (4 tokens). Pure function of the pack index. Implements the BatchSource protocol
    (`omni_mega.data.source`) with micro_batch_size 1."""

    def __init__(self, plan, model, data_dir, consumed_samples):
        self.plan, self.consumed_samples = plan, consumed_samples

    def _step_of(self, g: int) -> int:
        return int((g - self.plan.samples_before) // self.plan.global_batch_size)

    def _pack(self, g: int) -> dict:
        s, plan = self.plan.seq_length, self.plan
        share = plan.ratio_at(self._step_of(g))
        rng = torch.Generator().manual_seed(g)
        segs, images, n_vis = [], [], max(0, round(share * (s - 4)) - 7)
        if n_vis >= 1:
            name = list(COLOURS)[int(torch.randint(0, 3, (1,), generator=rng))]
            img = torch.tensor(COLOURS[name], dtype=torch.uint8).expand(28, 28 * n_vis, 3)
            images.append(img)
            segs.append(torch.tensor([IMG] * n_vis + [10] + list(name.encode()) + [demo_text.EOD]))
        used = sum(len(x) - 1 for x in segs)
        segs.append(text_window(g, s - 4 - used))
        tok, lab, pos, cu = [], [], [], [0]
        for x in segs:
            tok.append(x[:-1]), lab.append(x[1:]), pos.append(torch.arange(len(x) - 1))
            cu.append(cu[-1] + len(x) - 1)
        pad = s - cu[-1]
        tok.append(torch.zeros(pad, dtype=torch.int64)), lab.append(torch.zeros(pad, dtype=torch.int64))
        pos.append(torch.arange(pad))
        mask = torch.ones(s)
        mask[cu[-1]:] = 0
        cu.append(s)
        cu_t = torch.tensor(cu, dtype=torch.int32)
        mb = {"tokens": torch.cat(tok)[None].long(), "labels": torch.cat(lab)[None].long(), "loss_mask": mask[None],
              "position_ids": torch.cat(pos)[None], "cu_seqlens": cu_t, "max_seqlen": int((cu_t[1:] - cu_t[:-1]).max()),
              "stats": {"text_tokens": s - pad - n_vis, "visual_tokens": n_vis, "pad_tokens": pad,
                        "mm_samples": len(images), "text_samples": 1, "rejected_images": 0,
                        "mm_tokens": len(segs[0]) - 1 if images else 0, "capacity": s}}
        if images:
            from omni_mega.ops import pack_images

            packed = pack_images(images, patch_size=14, merge_size=2)
            mb["pixel_values"], mb["grid_thw"] = packed.pixel_values, packed.grid_thw
        return mb

    def plan_step(self, sl, ahead: int = 0) -> list[int]:
        base = self.consumed_samples + ahead * sl.global_batch + sl.dp_rank * sl.num_micro
        return [base + i for i in range(sl.num_micro)]

    def materialize(self, plan: list[int]) -> list[dict]:
        return [self._pack(g) for g in plan]

    def step_metrics(self, st: dict) -> dict:
        return step_record(st, self.plan.ratio_at(self._step_of(self.consumed_samples)))

    def advance(self, samples: int) -> None:
        self.consumed_samples += samples

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])


@pytest.fixture(scope="module")
def rt():
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runtime = init_distributed(load_config(None, BASE).parallel, seed=1234)
    yield runtime
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from omni_mega.data.demo.scenes import build_demo_data

    return build_demo_data(tmp_path_factory.mktemp("demo"), num_train=48, num_heldout=2)["train"]


@pytest.fixture(scope="module", params=["fake", "shards"])
def full_run(request, rt, shards, tmp_path_factory):
    """The uninterrupted run: config, per-step losses, parameter snapshots at the start and each stage end, metrics."""
    from omni_mega.training.trainer import Trainer

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("mm") / "run"
    cfg = _config(request.param, shards)
    tr = Trainer(load_config(None, cfg), rt, run, **_builders(request.param))
    snaps = [_params(tr)]
    losses = []
    for plan in tr.plans:  # Trainer.train's loop, with a parameter snapshot at each stage end
        if tr.stage.index != plan.index:
            tr._enter_stage(plan, fresh=True)
        assert tr._run_stage(plan, losses)
        snaps.append(_params(tr))
    tr.metrics.close()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    yield request.param, cfg, run, losses, snaps, rows


def _builders(kind: str) -> dict:
    return {"build_source": FakePackedSource} if kind == "fake" else {}


def _params(tr) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for c in tr.chunks for n, p in c.named_parameters()}


def test_loss_falls_and_mm_ratio_rises(full_run):
    kind, _, _, losses, _, rows = full_run
    assert all(torch.isfinite(torch.tensor(losses))) and len(rows) == 7
    assert losses[-1] < losses[0] - 0.5, losses
    text, joint = rows[:3], rows[3:]
    assert all(r["mm_ratio"] == 0 and r["images"] == 0 and r["mm_ratio_target"] == 0 for r in text)
    targets = [r["mm_ratio_target"] for r in joint]
    realized = [r["mm_ratio"] for r in joint]
    if kind == "fake":  # one image-text sample sized to the target per pack: the statistics must match it closely
        assert targets == pytest.approx([0.2, 0.35, 0.5, 0.65])
        assert all(b > a for a, b in zip(realized, realized[1:])), realized
        assert all(abs(r - t) < 0.12 for r, t in zip(realized, targets)), (realized, targets)
        assert all(r["images"] == 2 and r["visual_tokens"] > 0 and 0.9 < r["packing_efficiency"] < 1 for r in joint)
    else:  # the real packer tracks the share per window of samples: check the ramp's direction and the counts
        assert targets == pytest.approx([0.0, 0.25, 0.5, 0.75])
        assert realized[-1] > realized[0] + 0.3 and sum(realized[2:]) > sum(realized[:2]), realized
        assert joint[-1]["images"] > 0 and joint[-1]["visual_tokens"] > 0
        assert all(0.5 < r["packing_efficiency"] <= 1 for r in rows)


def test_frozen_vision_bitwise(full_run):
    _, _, _, _, (start, after_text, after_joint), _ = full_run
    vit = [n for n in start if ".vit." in f".{n}"]
    last = [n for n in vit if "layers.1." in n]
    assert vit and last
    # text stage: the whole vision tower and connector frozen; the LLM trained
    for n in vit + [n for n in start if n.startswith("connector.")]:
        assert torch.equal(start[n], after_text[n]), n
    assert not torch.equal(start["llm.output_layer.weight"], after_text["llm.output_layer.weight"])
    # joint stage: only the last ViT layer of the tower trains; patch embedding and layer 0 stay bitwise
    for n in vit:
        same = torch.equal(after_text[n], after_joint[n])
        assert same == (n not in last), n
    head = [n for n in start if n.startswith("connector.")]
    assert head and any(not torch.equal(after_text[n], after_joint[n]) for n in head)


@pytest.mark.parametrize("from_step", [3, 5])  # the text -> joint boundary, and inside the joint stage
def test_exact_resume(full_run, rt, tmp_path, from_step):
    import shutil

    from omni_mega.training.trainer import Trainer

    kind, cfg, run, losses, _, _ = full_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    for d in (mine / "ckpt").glob("step_*"):
        if int(d.name[5:]) > from_step:
            shutil.rmtree(d)
    torch.manual_seed(99)  # a different init RNG: everything must come from the checkpoint
    tr = Trainer(load_config(None, cfg), rt, mine, resume="auto", **_builders(kind))
    assert tr.state.step == from_step
    got = tr.train()
    assert got == losses[from_step:]


def test_tiny_omni_config_and_banner():
    """The embedded default: text -> joint (ramp) -> cooldown (re-warm-up) -> long context (2x seq, RoPE x16),
    valid for one process; the banner shows the modality mix, the share ramp, resolution bounds and visual budget."""
    from omni_mega.config import validate
    from omni_mega.config.plan import plan_stages
    from omni_mega.training.curriculum import LRPlan, banner

    cfg = load_config("examples/configs/tiny_omni.yaml")
    validate(cfg, world_size=1)
    plans = plan_stages(cfg)
    assert [p.name for p in plans] == ["text_pretrain", "joint", "cooldown", "long_context"]
    text, joint, cool, long = plans
    assert not any(d.multimodal for d in text.mix) and "vit" not in text.cfg.trainable
    assert (joint.ratio_at(0), joint.ratio_at(joint.steps)) == pytest.approx((0.3, 0.7))
    assert (text.ratio_start, text.ratio_end) == (0.0, 0.0) and (joint.ratio_start, joint.ratio_end) == (0.3, 0.7)
    assert cool.cfg.schedule == "rewarmup" and "vit.layers[-1:]" in cool.cfg.trainable
    assert long.seq_length == 2 * joint.seq_length and long.rope_base == 16 * cfg.model.llm.rotary_base
    assert cfg.model.connector.kind == "vet" and cfg.model.connector.num_indicators == 0
    text_banner = banner(text, LRPlan(cfg), {"llm": 1}, 1, 2, 4)
    assert "text-only stage: no images" in text_banner
    b = banner(joint, LRPlan(cfg), {"llm": 1}, 1, 2, 4)
    assert "multimodal token share 30% -> 70%" in b and "images 3,136-25,088 pixels" in b
    assert "visual budget 256 merged tokens per pack of 256" in b
    assert "text: topics (demo_text) 100% | image-text: demo_mm (demo_mm) 100%" in b


def test_report_multimodal(full_run, tmp_path):
    """report.md gets throughput, packing efficiency, the share columns and the captions; report.png a third panel."""
    import shutil

    from omni_mega.training.report import write_report

    kind, _, run, _, _, rows = full_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine, ignore=shutil.ignore_patterns("ckpt"))
    caps = [{"key": "00000000", "true": "a red circle", "generated": "a red circle", "exact": True},
            {"key": "00000001", "true": "x | y", "generated": "x", "exact": False}]
    (mine / "captions.json").write_text(json.dumps({"step": 7, "captions": caps}))
    png, md = write_report(mine)
    text = md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "tokens/s (tokens / training time over all steps); packing efficiency" in text
    t0, t1 = rows[3]["mm_ratio_target"], rows[-1]["mm_ratio_target"]
    assert f"| {t0:.0%} -> {t1:.0%} | {sum(r['mm_ratio'] for r in rows[3:]) / 4:.1%} |" in text
    assert "| text | 1-3 |" in text and "| 0% | 0.0% | 0 |" in text
    assert "(after step 7; 1/2 exact)" in text and "| 00000001 | x \\| y | x |" in text
