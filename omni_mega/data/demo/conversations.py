"""Built-in conversations, preference pairs and prompts about the demo scenes (`scenes`): questions on colour, shape,
count and the rendered text, with their answers, in ChatML over byte tokens (`conversations.templates.ByteChatTokenizer`).

- `sft`: one to three question-answer turns per image, sometimes after a system message; some questions ask for the
  answer in `<answer>...</answer>` tags (the format the GRPO prompts reward);
- `preference`: one question per image, chosen = the right answer, rejected = a wrong one of the same form (another
  colour, shape, count, or other words);
- `prompts`: a counting question per image (shapes in a scene, words on a line) with its number as the verifiable
  answer, to be answered in `<answer>` tags.
Splits `train` and `heldout` use different scene seeds. Built once under the data dir, like the image-text demo.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import uuid
from pathlib import Path

from omni_mega.data.conversations.messages import Image, Message
from omni_mega.data.conversations.shards import ConvShardWriter, Sequence
from omni_mega.data.shard_io import DATASET_JSON
from omni_mega.data.conversations.templates import ByteChatTokenizer, chat_identity, render
from omni_mega.data.demo import scenes

VERSION = 2  # bump when the generated samples change, so cached copies are rebuilt
SIZES = {"sft": (2000, 64), "preference": (1000, 64), "prompts": (600, 64)}  # (train, heldout) samples
TAGGED = " Put the number in <answer></answer>."
COUNTS = ("one", "two")
SYSTEM = "You are a helpful assistant that describes pictures."


def _image(rng: random.Random, kind: str):
    """(png bytes, h, w, facts): facts is {"objects": [(colour, shape)]} or {"text": str}."""
    if kind == "text_line":
        img, text = scenes.text_line_sample(rng)
        facts = {"text": text}
    else:
        img, objects = scenes.shape_scene(rng)
        facts = {"objects": objects}
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), img.height, img.width, facts


def questions(facts: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, right answer, a wrong answer of the same form) about one image."""
    if "text" in facts:
        words = scenes._words()
        wrong = words[rng.randrange(len(words))]
        return [("What does the text say?", facts["text"], wrong if wrong != facts["text"] else wrong + "s"),
                ("Read the text in the image.", facts["text"], wrong if wrong != facts["text"] else wrong + "s")]
    objects = facts["objects"]
    n = len(objects)
    out = [("How many shapes are there?", COUNTS[n - 1], COUNTS[2 - n]),
           ("How many shapes are there?" + TAGGED, f"<answer>{n}</answer>", f"<answer>{3 - n}</answer>"),
           ("Describe the picture.", scenes.caption(objects),
            scenes.caption([(rng.choice([c for c in scenes.COLOURS if c != col]), shp) for col, shp in objects]))]
    shapes = [s for _, s in objects]
    for colour, shape in objects:
        if shapes.count(shape) == 1:
            other = rng.choice([c for c in sorted(scenes.COLOURS) if c != colour])
            out.append((f"What colour is the {shape}?", colour, other))
    return out


def count_question(facts: dict) -> tuple[str, str]:
    """A counting question about one image and its numeric answer."""
    if "text" in facts:
        return "How many words are written in the image?" + TAGGED, str(len(facts["text"].split()))
    return "How many shapes are there?" + TAGGED, str(len(facts["objects"]))


def _conversation(facts: dict, rng: random.Random) -> list[Message]:
    qa = questions(facts, rng)
    rng.shuffle(qa)
    msgs = [Message("system", [SYSTEM])] if rng.random() < 0.3 else []
    for k, (q, a, _) in enumerate(qa[:rng.randint(1, 3)]):
        msgs += [Message("user", ([Image("0")] if k == 0 else []) + [q]), Message("assistant", [a])]
    return msgs


def _write(out: Path, kind: str, split: str, n: int) -> None:
    tok = ByteChatTokenizer()
    rng = random.Random(f"demo-{kind}-{split}-{VERSION}")
    with ConvShardWriter(out, kind, chat_identity(tok, "chatml")) as writer:
        for i in range(n):
            png, h, w, facts = _image(rng, "text_line" if i % 2 == 0 else "shape_scene")
            if kind == "sft":
                r = render(_conversation(facts, rng), "chatml", tok)
                writer.add([Sequence(r.ids, r.mask)], [(png, h, w)], {"source": f"demo {split} {i}"})
                continue
            if kind == "prompts":
                q, answer = count_question(facts)
                r = render([Message("user", [Image("0"), q])], "chatml", tok, generation_prompt=True)
                writer.add([Sequence(r.ids, r.mask * 0)], [(png, h, w)], {"source": f"demo {split} {i}",
                                                                           "answer": answer})
                continue
            q, right, wrong = rng.choice(questions(facts, rng))
            prompt = [Message("user", [Image("0"), q])]
            seqs = []
            for answer in (right, wrong):
                r = render(prompt + [Message("assistant", [answer])], "chatml", tok)
                seqs.append(Sequence(r.ids, r.mask))
            writer.add(seqs, [(png, h, w)], {"source": f"demo {split} {i}", "question": q, "right": right})
        writer.finish(source=f"omni_mega.data.demo.conversations v{VERSION} ({kind}, {split})",
                      bad_input={"counts": {}, "first": {}})


def build_demo_conversations(data_dir: str | Path, kind: str = "sft") -> dict[str, Path]:
    """Builds the demo `kind` ("sft" | "preference" | "prompts") conversations under `data_dir` once and returns {"train": dir,
    "heldout": dir} (ConvShardDataset directories); later calls return the cached copy."""
    name = f"demo_{kind}_v{VERSION}"
    root = Path(data_dir) / name
    paths = {"train": root / "train", "heldout": root / "heldout"}
    if all((p / DATASET_JSON).is_file() for p in paths.values()):
        return paths
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(data_dir) / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for split, n in zip(("train", "heldout"), SIZES[kind]):
            _write(tmp / split, kind, split, n)
        try:
            os.rename(tmp, root)  # atomic; fails when another process renamed its copy first
        except OSError:
            if not all((p / DATASET_JSON).is_file() for p in paths.values()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
