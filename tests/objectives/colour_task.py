"""A small verifiable vision-language task for the post-training tests: images of one colour (with noise), the
question "what colour is this?" and the colour's name; preference pairs put a wrong colour against the right one.
Written as JSONL + PNG files and turned into conversation shards by the real preprocessing tool."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 150, 40), "blue": (30, 60, 220), "yellow": (235, 200, 0),
           "orange": (245, 125, 0), "purple": (140, 40, 180), "black": (20, 20, 20)}
QUESTIONS = ("What colour is this?", "Which colour do you see?", "Name the colour.")


def _image(d: Path, name: str, rng: random.Random, colour: str) -> str:
    rgb = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    Image.new("RGB", (rng.choice((28, 56, 84)), rng.choice((28, 56))), rgb).save(d / name)
    return name


def write(d: Path, n_train: int = 300, n_heldout: int = 50, n_pairs: int = 200, seed: int = 1,
          tagged: float = 0.0) -> dict[str, Path]:
    """JSONL files (sft train and heldout, preference, prompts) with their images under `d`. A `tagged` share of the
    sft answers is written as `<answer>colour</answer>` (the format GRPO's `format` reward asks for)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = {}
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        lines = []
        for i in range(n):
            colour = rng.choice(sorted(COLOURS))
            img = _image(d, f"{split}{i}.png", rng, colour)
            answer = f"<answer>{colour}</answer>" if tagged and split == "train" and rng.random() < tagged else colour
            lines.append({"messages": [{"role": "user", "content": [{"type": "image", "image": img},
                                                                    {"type": "text", "text": rng.choice(QUESTIONS)}]},
                                       {"role": "assistant", "content": answer}]})
        out[split] = d / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines = []
    for i in range(n_pairs):
        colour = rng.choice(sorted(COLOURS))
        img = _image(d, f"pair{i}.png", rng, colour)
        wrong = rng.choice([c for c in sorted(COLOURS) if c != colour])
        lines.append({"prompt": [{"role": "user", "content": [{"type": "image", "image": img},
                                                             {"type": "text", "text": QUESTIONS[0]}]}],
                      "chosen": colour, "rejected": wrong})
    out["preference"] = d / "preference.jsonl"
    out["preference"].write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines = []
    for i in range(n_pairs):
        colour = rng.choice(sorted(COLOURS))
        img = _image(d, f"prompt{i}.png", rng, colour)
        lines.append({"messages": [{"role": "user", "content": [{"type": "image", "image": img},
                                                               {"type": "text", "text": rng.choice(QUESTIONS)}]}],
                      "answer": colour})
    out["prompts"] = d / "prompts.jsonl"
    out["prompts"].write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def shards(d: Path, tagged: float = 0.0) -> dict[str, Path]:
    """The task as conversation shard directories: {"train", "heldout", "preference", "prompts"}."""
    from omni_mega.data.conversations.preprocess import main

    files = write(d / "raw", tagged=tagged)
    out = {"heldout_jsonl": files["heldout"]}
    for name, path in files.items():
        out[name] = d / name
        kind = name if name in ("preference", "prompts") else "sft"
        main(["--input", str(path), "--output-dir", str(out[name]), "--kind", kind, "--log-interval", "100000"])
    return out
