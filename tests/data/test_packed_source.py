"""PackedSource (omni_mega.data.packed_source, built by omni_mega.data.source.build_source): packs agree with their samples, visual budget and capacity,
token-share tracking and the ramp, data-parallel balance and coverage, exact resume (also dp=2 and by replay),
rejected and oversized images, and packing efficiency on the built-in demo data."""

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from omni_mega.data import packing as mp
from omni_mega.data.pack_stream import PackingSpec
from omni_mega.data.packed_source import PackedSource
from omni_mega.data.multimodal.shards import ImageTextRecord
from omni_mega.data.source import StepSlice

IMG, SEP, EOD = -200, 10, 256
PIX = dict(patch_size=14, merge_size=2, min_pixels=28 * 28, max_pixels=112 * 224)
SPEC = dict(stage_start=0, stage_index=0, seed=7, image_token_id=IMG, eod=EOD, sep=SEP, temporal_patch_size=2)


def _png(h, w, rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class MemMM:
    """In-memory dataset with the MMShardDataset interface: Pillow-made PNGs 20-112 px tall, byte captions."""

    tokenizer = {"kind": "byte", "vocab_size": 257, "eod": EOD}

    def __init__(self, n, seed, sizes=None):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            h, w = sizes[i] if sizes else (int(rng.integers(20, 113)), int(rng.integers(20, 200)))
            cap = rng.integers(32, 127, int(rng.integers(0, 50))).astype(np.int32)
            self.items.append([h, w, _png(h, w, rng) if h * w < 10**5 else b"", cap])  # huge: meta only

    def __len__(self):
        return len(self.items)

    def meta(self, i):
        h, w, _, cap = self.items[i]
        return h, w, len(cap)

    def __getitem__(self, i):
        h, w, data, cap = self.items[i]
        return ImageTextRecord(f"{i:08d}", data, cap)


class MemText:
    """In-memory documents (TextDocs interface): random byte documents of 0-300 tokens + EOD."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.docs = [rng.integers(0, 256, int(rng.integers(0, 300))) for _ in range(n)]

    def __len__(self):
        return len(self.docs)

    def num_tokens(self, i):
        return len(self.docs[i]) + 1

    def tokens(self, i):
        return np.append(self.docs[i], EOD)


@pytest.fixture(scope="module")
def mm_set():
    return MemMM(40, seed=int(np.random.default_rng().integers(1 << 30)))


@pytest.fixture(scope="module")
def text_set():
    return MemText(30, seed=int(np.random.default_rng().integers(1 << 30)))


def make(mm_set, text_set, consumed=0, **kw):
    args = dict(seq_length=128, visual_budget=48, pack_window=24, ratio_start=0.5, ratio_end=0.5, stage_packs=64,
                **SPEC, **PIX)
    args.update(kw)
    return PackedSource(PackingSpec(**args), [text_set], [1.0], [mm_set], [1.0], consumed)


def run_steps(src, steps, dp=1, num_micro=4):
    """Per step, per rank: the list of micro-batch dicts (the same source serves all ranks, as each rank would)."""
    out = []
    for _ in range(steps):
        out.append([list(src.micro_batches(StepSlice(r, dp, num_micro, 1, src.spec.seq_length))) for r in range(dp)])
        src.advance(dp * num_micro)
    return out


def same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]) if not torch.is_tensor(a[k]) else torch.equal(a[k], b[k]), k


def test_packs_agree_with_their_samples(mm_set, text_set):
    src = make(mm_set, text_set)
    for _ in range(3):
        packs = src.step_packs(4)
        for pack in packs:
            mb = src.materialize_pack(pack)
            st, cu, tok = mb["stats"], mb["cu_seqlens"].tolist(), mb["tokens"][0]
            assert st["text_tokens"] + st["visual_tokens"] + st["pad_tokens"] == 128 and cu[-1] == 128
            assert st["visual_tokens"] == int((tok == IMG).sum()) <= 48  # budget, counted from the tokens
            grid = mb.get("grid_thw", torch.zeros(0, 3, dtype=torch.int64))
            assert int((grid.prod(1) // 4).sum()) == st["visual_tokens"]
            assert mb.get("pixel_values", torch.zeros(0, 1176)).shape == (int(grid.prod(1).sum()), 1176)
            mm_i = 0
            for s, a, b in zip(pack, cu[:-1], cu[1:]):  # each segment is its sample, shifted inside it
                seg, lab = tok[a:b].tolist(), mb["labels"][0, a:b].tolist()
                if s.kind == "text":
                    want = np.append(text_set.docs[s.index], EOD)[:129]
                else:
                    h, w, _ = mm_set.meta(s.index)
                    n_vis, rh, rw = mp.visual_tokens(h, w, **PIX)
                    assert grid[mm_i].tolist() == [1, rh // 14, rw // 14]
                    mm_i += 1
                    want = np.concatenate([[IMG] * n_vis, [SEP], mm_set[s.index].tokens, [EOD]])[:129]
                assert seg + lab[-1:] == want.tolist() and lab[:-1] == seg[1:]
                assert mb["position_ids"][0, a:b].tolist() == list(range(b - a))
            assert mm_i == len(grid)
            if mm_i:  # pixels are the pack's images in placeholder order
                from omni_mega.data.images import decode_and_pack

                ref, kept, _ = decode_and_pack([mm_set[s.index].image for s in pack if s.kind == "mm"], **PIX)
                assert len(kept) == mm_i and torch.equal(mb["pixel_values"], ref.pixel_values)
            bad = (mb["tokens"] == IMG) | (mb["labels"] == IMG) | (torch.arange(128) >= cu[len(pack)])
            assert torch.equal(mb["loss_mask"], (~bad).float())
        src.advance(4)


def _share(src, packs):
    mm = sum(s.positions for p in packs for s in p if s.kind == "mm")
    return mm / sum(s.positions for p in packs for s in p)


def test_ratio_tracks_the_target_and_the_ramp_rises(mm_set, text_set):
    const = make(mm_set, text_set, ratio_start=0.3, ratio_end=0.3, stage_packs=240)
    packs = [const.pack_at(p) for p in range(240)]
    assert abs(_share(const, packs) - 0.3) < 0.03
    # Every drawn sample is emitted exactly once: packs + what the last window carries over = all draws.
    end = const.stream._wins[-1].end
    emitted = sum(len(p) for w in const.stream._wins for p in w.packs)
    assert emitted + len(end["carry"]) == end["text"]["step"] + end["mm"]["step"] - sum(const.skipped.values())
    assert any(s.carried for w in const.stream._wins for p in w.packs for s in p)
    ramp = make(mm_set, text_set, ratio_start=0.0, ratio_end=0.6, stage_packs=240)
    packs = [ramp.pack_at(p) for p in range(240)]
    shares = [_share(ramp, packs[q * 60:(q + 1) * 60]) for q in range(4)]
    assert shares == sorted(shares) and shares[0] < 0.15 and shares[-1] > 0.45
    for q, s in enumerate(shares):  # each quarter near the ramp's value at its middle (windows lag a little)
        assert abs(s - 0.6 * (q + 0.5) / 4) < 0.08, shares
    ramp.advance(240)
    assert abs(ramp.multimodal_share() - 0.3) < 0.05 and ramp.packing_efficiency() > 0.9


def test_dp2_balanced_disjoint_and_complete(mm_set, text_set):
    one = run_steps(make(mm_set, text_set), 3, dp=1, num_micro=6)
    two = run_steps(make(mm_set, text_set), 3, dp=2, num_micro=3)
    for s1, s2 in zip(one, two):
        key = lambda mb: tuple(mb["tokens"][0].tolist())  # noqa: E731
        assert sorted(map(key, s1[0])) == sorted(map(key, s2[0] + s2[1]))  # same packs, each on one rank
        loads = [sum(mb["stats"]["visual_tokens"] for mb in r) for r in s2]
        assert abs(loads[0] - loads[1]) <= max(mb["stats"]["visual_tokens"] for mb in s1[0])


@pytest.mark.parametrize("dp", [1, 2])
def test_exact_resume_from_state_and_by_replay(mm_set, text_set, dp):
    kw = dict(stage_index=1, stage_start=40, pack_window=5, ratio_start=0.2, ratio_end=0.7)  # <= 5 packs a window
    ref = make(mm_set, text_set, consumed=40, **kw)
    before = run_steps(ref, 2, dp=dp, num_micro=3)
    state = json.loads(json.dumps(ref.state_dict()))  # checkpoints store it as JSON
    after = run_steps(ref, 2, dp=dp, num_micro=3)
    resumed = make(mm_set, text_set, consumed=40, **kw)
    resumed.load_state_dict(state)
    replayed = make(mm_set, text_set, consumed=state["consumed_samples"], **kw)  # no state: replays the stage
    for other in (resumed, replayed):
        for s_ref, s_new in zip(after, run_steps(other, 2, dp=dp, num_micro=3)):
            for r_ref, r_new in zip(s_ref, s_new):
                for a, b in zip(r_ref, r_new, strict=True):
                    same_batch(a, b)
    assert not torch.equal(before[-1][0][0]["tokens"], after[0][0][0]["tokens"])
    assert state["window"]["window"] >= 1  # the saved window is past the stage's first one
    with pytest.raises(ValueError, match="stage"):
        make(mm_set, text_set, consumed=40, **dict(kw, stage_index=2)).load_state_dict(state)


@pytest.mark.parametrize("damage", ["corrupt", "size_differs_from_index"])
def test_rejected_image_becomes_padding_in_place(mm_set, text_set, caplog, damage):
    clean = make(mm_set, text_set, ratio_start=1.0, ratio_end=1.0)
    pack = next(p for p in clean.step_packs(16) if sum(s.kind == "mm" for s in p) >= 2)
    victim = pack[1] if pack[1].kind == "mm" else next(s for s in pack if s.kind == "mm")
    broken = MemMM(0, 0)
    broken.items = [list(it) for it in mm_set.items]
    side = 112 if victim.visual == 1 else 28  # a real image whose token count differs from the planned one
    broken.items[victim.index][2] = (b"\x89PNG\r\n\x1a\n not really a png" if damage == "corrupt" else
                                     _png(side, side, np.random.default_rng()))
    bad_src = PackedSource(clean.spec, [text_set], [1.0], [broken], [1.0])
    with caplog.at_level(logging.WARNING):
        good, bad = clean.materialize_pack(pack), bad_src.materialize_pack(pack)
    assert ("rejected" if damage == "corrupt" else "index size") in caplog.text
    assert sum(bad_src.decode_stats.rejected.values()) == 1
    i = pack.index(victim)
    a, b = good["cu_seqlens"][i].item(), good["cu_seqlens"][i + 1].item()
    assert torch.equal(good["cu_seqlens"], bad["cu_seqlens"])  # nobody moved
    keep = torch.ones(128, dtype=torch.bool)
    keep[a:b] = False
    for k in ("tokens", "labels", "loss_mask", "position_ids"):
        assert torch.equal(good[k][0, keep], bad[k][0, keep]), k
    assert (bad["tokens"][0, a:b] == 0).all() and (bad["loss_mask"][0, a:b] == 0).all()
    assert bad["stats"]["rejected_images"] == 1 and good["stats"]["rejected_images"] == 0
    assert bad["stats"]["pad_tokens"] == good["stats"]["pad_tokens"] + (b - a)
    k_img = [s for s in pack if s.kind == "mm"].index(victim)
    g = good["grid_thw"]
    rows = g.prod(1).tolist()
    start = sum(rows[:k_img])
    assert torch.equal(bad["grid_thw"], torch.cat([g[:k_img], g[k_img + 1:]]))
    assert torch.equal(bad["pixel_values"], torch.cat([good["pixel_values"][:start],
                                                       good["pixel_values"][start + rows[k_img]:]]))


def test_oversized_image_is_skipped_and_counted(text_set, caplog):
    sizes = [(40, 60)] * 5 + [(2000, 2000)] + [(40, 60)] * 4
    ds = MemMM(10, 3, sizes=sizes)
    src = PackedSource(PackingSpec(seq_length=128, visual_budget=48, pack_window=10, ratio_start=1.0,
                                   ratio_end=1.0, stage_packs=8, **dict(SPEC, seed=1234), patch_size=14, merge_size=2,
                                   min_pixels=28 * 28, max_pixels=4000 * 4000), [], [], [ds], [1.0])
    with caplog.at_level(logging.WARNING):
        win = src.stream._build(src.stream._start_snap)  # the first window: one epoch of the ten items
    assert src.skipped[mp.OVER_BUDGET] == 1 and "visual_over_budget" in caplog.text
    placed = [s.index for p in win.packs for s in p] + [c[2] for c in win.end["carry"]]
    assert sorted(placed) == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # the other nine all packed (or carried on)


def test_demo_data_packing_efficiency(tmp_path_factory, monkeypatch):
    from omni_mega.config.model import ConnectorConfig, ModelConfig, ViTConfig
    from omni_mega.config.schema import DataConfig, RunConfig
    from omni_mega.config.stage import DatasetConfig, StageConfig
    from omni_mega.data.demo import scenes as demo
    from omni_mega.config.plan import plan_stages
    from omni_mega.data.source import build_source

    build = demo.build_demo_data
    monkeypatch.setattr(demo, "build_demo_data", lambda d: build(d, num_train=400, num_heldout=4))  # same generator
    data_dir = tmp_path_factory.mktemp("mmdata")
    mix = [DatasetConfig(name="text", source="demo_text"), DatasetConfig(name="mm", source="demo_mm")]
    # examples/configs/tiny_omni.yaml's data sizes and stage shapes (pack_window 64, 56x56..112x224 pixels).
    cfg = RunConfig(model=ModelConfig(vit=ViTConfig(), connector=ConnectorConfig()),
                    data=DataConfig(seq_length=256, micro_batch_size=1, global_batch_size=8, min_pixels=3136,
                                    max_pixels=25088, pack_window=64),
                    stages=[StageConfig(name="text", steps=40, data=mix[:1]),
                            StageConfig(name="joint", steps=160, data=mix, multimodal_ratio=0.2,
                                        multimodal_ratio_end=0.6),
                            StageConfig(name="long", steps=20, data=mix, multimodal_ratio=0.6, seq_length=512,
                                        global_batch_size=4),
                            StageConfig(name="mm", steps=40, data=mix[1:])])
    starts = 0
    for plan in plan_stages(cfg):
        gbs, seq = plan.global_batch_size, plan.seq_length
        src = build_source(plan, cfg.model, data_dir, consumed_samples=starts)
        assert src.spec.stage_start == starts and src.spec.visual_budget == seq
        batches = run_steps(src, 2, num_micro=gbs)  # decode two steps for real, then plan the rest of the stage
        src.advance((plan.steps - 2) * gbs)
        starts += plan.steps * gbs
        assert src.packing_efficiency() >= 0.95, (plan.name, src.packing_efficiency())
        mbs = [mb for s in batches for mb in s[0]]
        assert all(mb["tokens"].shape == (1, seq) and mb["stats"]["rejected_images"] == 0 for mb in mbs)
        assert sum("pixel_values" in mb for mb in mbs) >= (0 if plan.name == "text" else 2)
        want = {"text": (0.0, 0.0), "joint": (0.35, 0.45), "long": (0.55, 0.65), "mm": (1.0, 1.0)}[plan.name]
        assert want[0] <= src.multimodal_share() <= want[1], (plan.name, src.multimodal_share())
    cfg.model.vit = None
    with pytest.raises(ValueError, match="need model.vit"):
        build_source(plan, cfg.model, data_dir, 0)


def test_demo_text_pieces_cover_every_document_byte_once():
    from omni_mega.data.demo.text import DemoTextDocs

    whole, cut = DemoTextDocs(0), DemoTextDocs(3, max_tokens=101)
    assert len(cut) > len(whole) and {cut.num_tokens(i) for i in range(len(cut))} <= set(range(2, 102))
    docs = {}  # reassemble each document from its pieces (they overlap by one token)
    for i in range(len(cut)):
        d, start = cut.pieces.locate(cut._item(i))
        docs.setdefault(d, {})[start] = cut.tokens(i).tolist()
    for d, parts in docs.items():
        text = [t for k, start in enumerate(sorted(parts)) for t in parts[start][(k > 0):]]
        assert text == whole.tokens((d - whole.shift) % len(whole)).tolist()


def test_indexed_documents_get_one_eod(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from omni_mega.data.text.indexed import IndexedDocs

    builder = IndexedDatasetBuilder(str(tmp_path / "d.bin"), dtype=np.int32)
    for doc in ([5, 6, 7], [8, EOD], [9]):
        builder.add_item(torch.tensor(doc, dtype=torch.int32))
        builder.end_document()
    builder.finalize(str(tmp_path / "d.idx"))
    docs = IndexedDocs(str(tmp_path / "d"), EOD)
    assert [docs.num_tokens(i) for i in range(3)] == [4, 2, 2]
    assert [docs.tokens(i).tolist() for i in range(3)] == [[5, 6, 7, EOD], [8, EOD], [9, EOD]]


def _indexed(tmp_path, docs, sentences=False):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(tmp_path / "d.bin"), dtype=np.int32)
    for doc in docs:
        for part in (doc if sentences else [doc]):
            builder.add_item(torch.tensor(part, dtype=torch.int32))
        builder.end_document()
    builder.finalize(str(tmp_path / "d.idx"))
    return str(tmp_path / "d")


@pytest.mark.parametrize("sentences", [False, True])
def test_indexed_pieces_predict_every_token_exactly_once(tmp_path, sentences):
    """Long documents become pieces of <= S + 1 tokens overlapping by one: the (input, target) pairs of all pieces
    are exactly those of the documents (nothing truncated away); a document preprocessed as several sentences
    reads back whole."""
    from omni_mega.data.text.indexed import IndexedDocs

    rng = np.random.default_rng()
    docs = [rng.integers(0, 200, int(n)).tolist() for n in rng.integers(1, 70, 12)] + [[], [EOD]]
    stored = [[d[:len(d) // 2], d[len(d) // 2:]] for d in docs] if sentences else docs
    prefix = _indexed(tmp_path, stored, sentences)
    S = 16
    ds = IndexedDocs(prefix, EOD, seq_length=S)
    full = [d if d[-1:] == [EOD] else d + [EOD] for d in docs]  # one EOD per document
    want = sorted((doc, j) for doc, d in enumerate(full) for j in range(len(d) - 1))
    got, by_doc = [], {}
    for i in range(len(ds)):
        t = ds.tokens(i)
        assert len(t) == ds.num_tokens(i) <= S + 1
        doc, start = ds.pieces.locate(i)
        by_doc.setdefault(doc, []).append((start, t.tolist()))
    for doc, parts in by_doc.items():
        for start, t in parts:
            assert t == full[doc][start:start + len(t)]
            got += [(doc, start + j) for j in range(len(t) - 1)]
    assert sorted(got) == want
    assert IndexedDocs(prefix, None).tokens(0).tolist() == docs[0]  # no EOD known: as stored


def test_micro_batch_of_two_packs_is_the_packs_end_to_end(mm_set, text_set):
    src = make(mm_set, text_set)
    one = list(src.micro_batches(StepSlice(0, 1, 4, 1, 128)))
    two = list(src.micro_batches(StepSlice(0, 1, 2, 2, 128)))
    for k, mb in enumerate(two):
        a, b = one[2 * k], one[2 * k + 1]
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            assert torch.equal(mb[key], torch.cat([a[key], b[key]], dim=1)), key
        assert mb["cu_seqlens"].tolist() == a["cu_seqlens"].tolist() + (b["cu_seqlens"][1:] + 128).tolist()
        px = [x["pixel_values"] for x in (a, b) if "pixel_values" in x]
        if px:
            assert torch.equal(mb["pixel_values"], torch.cat(px))
        assert mb["stats"] == {key: a["stats"][key] + b["stats"][key] for key in a["stats"]}


def test_prefetched_batches_are_the_same_bytes(mm_set, text_set):
    from omni_mega.data.prefetch import Prefetcher

    sl = StepSlice(0, 1, 2, 1, 128)
    out = {}
    for depth in (0, 2):
        src = make(mm_set, text_set)
        pf = Prefetcher(src, sl, steps_left=4, depth=depth)
        steps = []
        for _ in range(4):
            batches, wait_ms = pf.next_step()
            assert wait_ms >= 0
            steps.append(batches)
            src.advance(sl.global_batch)
            pf.step_done()
        with pytest.raises(RuntimeError, match="no steps left"):
            pf.next_step()
        pf.close()
        out[depth] = (steps, src.state_dict())
    assert out[0][1] == out[2][1]  # prefetching never moves the resume state ahead
    for s0, s2 in zip(out[0][0], out[2][0]):
        for a, b in zip(s0, s2, strict=True):
            same_batch(a, b)
