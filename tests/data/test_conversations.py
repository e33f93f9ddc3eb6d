"""Conversations: answer-only masks under ChatML, Llama-3 and a tokenizer's Jinja template; the record formats; the
preprocessing tool's bad-input accounting; conversation samples in packs (images expanded at the stage's size,
one segment per sequence, preference pairs marked)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from omni_mega.data.conversations import messages as M
from omni_mega.data.conversations.shards import IMAGE_MARK, ConvShardDataset
from omni_mega.data.conversations.templates import ByteChatTokenizer, HFChatTokenizer, render

TWO_TURNS = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Colour?"}]},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "Shape?"},
    {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]}


def _supervised(tok, r) -> str:
    return tok.decode([int(i) for i, m in zip(r.ids, r.mask) if m])


@pytest.mark.parametrize("template, eot", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_mask_is_exactly_the_answers_and_their_end_of_turn(template, eot):
    tok = ByteChatTokenizer()
    r = render(M.parse_sft(TWO_TURNS), template, tok)
    assert _supervised(tok, r) == f"red{eot}a square{eot}"
    assert r.mask.sum() == len("red") + len("a square") + 2
    assert list(r.ids).count(IMAGE_MARK) == 1 and r.mask[list(r.ids).index(IMAGE_MARK)] == 0
    whole = tok.decode([i for i in r.ids if i != IMAGE_MARK])
    assert "Be brief." in whole and "Colour?" in whole and whole.count(eot) == 5  # every turn is closed
    gen = render(M.parse_sft(TWO_TURNS)[:-1], template, tok, generation_prompt=True)
    tail = "<|im_start|>assistant\n" if template == "chatml" else "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert tok.decode([i for i in gen.ids if i != IMAGE_MARK]).endswith("Shape?" + eot + ("\n" if template == "chatml"
                                                                                           else "") + tail)


# A ChatML template in the form Qwen's tokenizer_config.json carries (text and image parts).
QWEN_LIKE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
             "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
             "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
             "{{'<|im_end|>' + '\\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def hf_chat(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from omni_mega.data.demo.corpus import demo_documents
    from omni_mega.data.text.tokenizer import HuggingFaceTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(demo_documents()[:200], trainer=trainer)
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_LIKE, "eos_token": "<|im_end|>"}))
    return HFChatTokenizer(HuggingFaceTokenizer(str(d))), d


def test_jinja_template_masks_the_same_tokens_as_builtin_chatml(hf_chat):
    tok, _ = hf_chat
    msgs = M.parse_sft(TWO_TURNS)
    builtin, jinja = render(msgs, "chatml", tok), render(msgs, "jinja", tok, chat_template=QWEN_LIKE)
    assert _supervised(tok, jinja) == _supervised(tok, builtin) == "red<|im_end|>a square<|im_end|>"
    assert list(jinja.ids).count(IMAGE_MARK) == 1
    assert tok.decode([i for i in jinja.ids if i != IMAGE_MARK]) == tok.decode([i for i in builtin.ids
                                                                                  if i != IMAGE_MARK])


def test_sharegpt_records_and_bad_records():
    rec = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                               {"from": "gpt", "value": "A cat."}]}
    msgs = M.parse_sft(rec)
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[0].parts == [M.Image("x.png"), "What is it?"]
    untagged = M.parse_sft({"image": "y.png", "conversations": [{"from": "human", "value": "Hi"},
                                                                {"from": "gpt", "value": "Hello"}]})
    assert untagged[0].parts[0] == M.Image("y.png")  # LLaVA: the image goes before the first question
    cases = {M.NO_ASSISTANT: {"messages": [{"role": "user", "content": "hi"}]},
             M.UNKNOWN_ROLE: {"messages": [{"role": "bot", "content": "hi"}]},
             M.EMPTY_CONTENT: {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
             M.BAD_IMAGE_REF: {"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                                  {"from": "gpt", "value": "x"}]},
             M.NOT_A_CONVERSATION: {"text": "plain"}}
    for reason, bad in cases.items():
        with pytest.raises(M.BadRecord) as e:
            M.parse_sft(bad)
        assert e.value.reason == reason
    prompt, chosen, rejected = M.parse_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert prompt[0].role == "user" and chosen[0].parts == ["4"] and rejected[0].parts == ["5"]


def _png(colour, h=40, w=56):
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def _write_inputs(d):
    (d / "red.png").write_bytes(_png((220, 30, 30)))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    lines = [json.dumps(TWO_TURNS).replace("a.png", "red.png"),                      # 1 ok
             json.dumps({"messages": [{"role": "user", "content": "hi"}]}),         # 2 no assistant
             "{not json",                                                           # 3 malformed
             json.dumps(TWO_TURNS).replace("a.png", "missing.png"),                 # 4 missing image
             json.dumps(TWO_TURNS).replace("a.png", "broken.png"),                  # 5 bad image
             json.dumps({"messages": [{"role": "user", "content": "q" * 500},
                                      {"role": "assistant", "content": "a"}]}),     # 6 too long
             json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]})]  # 7
    (d / "conv.jsonl").write_text("\n".join(lines) + "\n")


def test_preprocess_counts_bad_records_with_lines_and_keeps_order(tmp_path):
    from omni_mega.data.conversations.preprocess import main

    _write_inputs(tmp_path)
    out = main(["--input", str(tmp_path / "conv.jsonl"), "--output-dir", str(tmp_path / "ds"), "--max-tokens", "300"])
    assert out["samples"] == 2 and out["seen"] == 7
    assert out["bad"] == {"no_assistant_turn": 1, "malformed_json": 1, "missing_image": 1, "bad_image": 1,
                          "too_long": 1}
    assert out["bad_first"]["missing_image"] == ["conv.jsonl:4"] and out["bad_first"]["too_long"] == ["conv.jsonl:6"]
    ds = ConvShardDataset(tmp_path / "ds")
    assert len(ds) == 2 and ds.kind == "sft" and ds.has_images
    first, second = ds[0], ds[1]
    assert first.meta["source"] == "conv.jsonl:1" and second.meta["source"] == "conv.jsonl:7"
    assert ds.meta(0) == ([len(first.sequences[0].ids)], [(40, 56)]) and first.images[0][:4] == b"\x89PNG"
    tok = ByteChatTokenizer()
    assert _supervised(tok, first.sequences[0]) == "red<|im_end|>a square<|im_end|>"
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["bad_input"]["counts"]["bad_image"] == 1


def test_preprocess_with_nothing_usable_exits_2_and_keeps_the_old_dataset(tmp_path):
    from omni_mega.data.conversations.preprocess import main

    (tmp_path / "none.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2 and not (tmp_path / "out" / "dataset.json").exists()
    (tmp_path / "ok.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}) + "\n")
    main(["--input", str(tmp_path / "ok.jsonl"), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        main(["--input", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "out")])
    assert len(ConvShardDataset(tmp_path / "out")) == 1  # the old dataset survived
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _source(ds, **kw):
    from omni_mega.data.pack_stream import PackingSpec
    from omni_mega.data.packed_source import PackedSource

    spec = dict(seq_length=256, visual_budget=256, pack_window=8, ratio_start=1.0, ratio_end=1.0, stage_packs=8,
                stage_start=0, stage_index=0, seed=3, image_token_id=-200, eod=256, sep=10, patch_size=14,
                merge_size=2, temporal_patch_size=2, min_pixels=28 * 28, max_pixels=112 * 112)
    spec.update(kw)
    return PackedSource(PackingSpec(**spec), [], [], [ds], [1.0])


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    from omni_mega.data.demo.conversations import build_demo_conversations

    d = tmp_path_factory.mktemp("democonv")
    return build_demo_conversations(d, "sft"), build_demo_conversations(d, "preference")


def test_packed_conversations_expand_images_and_keep_answer_masks(demo_dirs):
    from omni_mega.data import packing as mp

    ds = ConvShardDataset(demo_dirs[0]["train"])
    src = _source(ds)
    pack = next(p for p in src.step_packs(8) if len(p) >= 2)
    mb = src.materialize_pack(pack)
    cu = mb["cu_seqlens"].tolist()
    grid_row = 0
    for s, a, b in zip(pack, cu[:-1], cu[1:]):
        rec = ds[s.index]
        (h, w), = rec.meta["images"]
        n_vis, rh, rw = mp.visual_tokens(h, w, patch_size=14, merge_size=2, min_pixels=28 * 28, max_pixels=112 * 112)
        seq = rec.sequences[0]
        assert b - a == len(seq.ids) - 1 + n_vis - 1 == s.positions
        tokens = mb["tokens"][0, a:b].tolist() + [mb["labels"][0, b - 1].item()]
        assert tokens.count(-200) == n_vis and -1 not in tokens
        # the loss mask of the pack is the stored answer mask, shifted onto the targets and expanded
        k = list(seq.ids).index(IMAGE_MARK)
        want = np.concatenate([seq.mask[1:k + 1], np.zeros(n_vis - 1), seq.mask[k + 1:]])
        assert mb["loss_mask"][0, a:b].tolist() == want.tolist()
        assert mb["grid_thw"][grid_row].tolist() == [1, rh // 14, rw // 14]
        grid_row += 1
    assert mb["stats"]["supervised_tokens"] == int(mb["loss_mask"].sum()) > 0
    assert mb["stats"]["images"] == len(pack) == len(mb["grid_thw"])


def test_preference_pairs_travel_together(demo_dirs):
    ds = ConvShardDataset(demo_dirs[1]["train"])
    assert ds.kind == "preference" and ds.sequences_per_sample == 2
    src = _source(ds)
    from omni_mega.data.source import StepSlice

    (mb,) = list(src.micro_batches(StepSlice(0, 1, 1, 1, 256)))
    pairs, ids = mb["pairs"], mb["pair_ids"]
    cu = mb["cu_seqlens"]
    assert pairs.shape[1] == 2 and pairs.shape == ids.shape and len(pairs) >= 1
    tok = ByteChatTokenizer()
    for (c, r), (_, idx) in zip(pairs.tolist(), ids.tolist()):
        assert r == c + 1  # chosen then rejected, side by side
        rec = ds[idx]
        for seg, seq in ((c, rec.sequences[0]), (r, rec.sequences[1])):
            a, b = cu[seg].item(), cu[seg + 1].item()
            got = [int(t) for t, m in zip(mb["labels"][0, a:b], mb["loss_mask"][0, a:b]) if m]
            assert tok.decode(got) == _supervised(tok, seq)  # only the reply is scored
        assert rec.meta["right"] in _supervised(tok, rec.sequences[0])
    assert len(mb["grid_thw"]) == 2 * len(pairs)  # the prompt's image is shown in both sequences
