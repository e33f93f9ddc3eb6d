"""Verifiable rewards for GRPO: each a function (generated text, reference answer, generated token count) -> float,
weighted and summed from the stage's `grpo.rewards`; each term is logged on its own (`reward/<name>`).

Built in:
- `answer`: 1.0 when the final answer equals the reference, else 0.0. The final answer is the content of the last
  `<answer>...</answer>`, else of the last `\\boxed{...}`, else the whole text; both sides are normalised
  (whitespace collapsed, case folded, a trailing period dropped) and compared as numbers when both parse as numbers
  (so "42.0" matches "42");
- `format`: 1.0 when the text holds exactly one `<answer>...</answer>` and nothing after it, else 0.0;
- `length`: 0.0 up to `max_length` / 2 generated tokens, falling linearly to -1.0 at `max_length`.
A user reward is `function: "package.module:name"`, called as name(text, answer) -> float.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def final_answer(text: str) -> str:
    tags = ANSWER_TAG.findall(text)
    if tags:
        return tags[-1]
    boxed = BOXED.findall(text)
    return boxed[-1] if boxed else text


def normalise(s: str) -> str:
    s = " ".join(s.split()).casefold()
    return s[:-1] if s.endswith(".") else s


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def answer_reward(text: str, answer: str, n_tokens: int = 0) -> float:
    got, want = normalise(final_answer(text)), normalise(answer)
    a, b = _number(got), _number(want)
    if a is not None and b is not None:
        return float(abs(a - b) <= 1e-9 * max(1.0, abs(b)))
    return float(got == want)


def format_reward(text: str, answer: str, n_tokens: int = 0) -> float:
    tags = ANSWER_TAG.findall(text)
    return float(len(tags) == 1 and text.rstrip().endswith("</answer>"))


def length_penalty(max_length: int) -> Callable[[str, str, int], float]:
    half = max_length / 2

    def reward(text: str, answer: str, n_tokens: int = 0) -> float:
        return -min(1.0, max(0.0, (n_tokens - half) / half))

    return reward


def _user(path: str) -> Callable:
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"grpo reward function {path!r}: cannot import it ({e})") from None
    return lambda text, answer, n_tokens=0: float(fn(text, answer))


def build_rewards(configs) -> list[tuple[str, float, Callable]]:
    """(name, weight, function(text, answer, n_tokens)) per configured reward."""
    out = []
    for r in configs:
        if r.function is not None:
            fn = _user(r.function)
        else:
            fn = {"answer": answer_reward, "format": format_reward}.get(r.name) or length_penalty(r.max_length)
        out.append((r.name, float(r.weight), fn))
    return out
