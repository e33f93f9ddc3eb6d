"""Chat templates: messages -> token ids with a per-token loss mask, images as IMAGE_MARK ids.

What is supervised: the content of every assistant turn and the end-of-turn token that closes it (so the model
learns to stop); system and user turns and the role headers are not. Built-in templates:
- `chatml` (Qwen):  <|im_start|>{role}\\n{content}<|im_end|>\\n
- `llama3`:         <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>
Headers, contents and separators are encoded piece by piece (the pieces never merge into one token across a turn
boundary), special tokens by id. `jinja` renders the tokenizer's own `chat_template` (tokenizer_config.json) and
finds the supervised text as the difference between rendering a conversation up to an assistant turn with and
without it (the generation prompt belongs to the header); trailing whitespace after the end-of-turn is left
unsupervised.

A `ChatTokenizer` adapts a tokenizer: `encode(text)` without special tokens, `special(name)` -> id (an error naming
the token when the vocabulary lacks it), `identity` (recorded in dataset.json). `ByteChatTokenizer` is the demo's:
UTF-8 bytes 0-255, EOD 256, then the templates' special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_mega.data.conversations.messages import Image, Message
from omni_mega.data.conversations.shards import IMAGE_MARK

SPECIALS = {"chatml": ("<|im_start|>", "<|im_end|>"),
            "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
TEMPLATES = ("chatml", "llama3", "jinja")


class ByteChatTokenizer:
    """Byte ids (0-255), EOD 256, then every built-in template's special tokens (257, 258, ...)."""

    names = tuple(n for t in SPECIALS.values() for n in t)

    def __init__(self) -> None:
        self.eod = 256
        self.ids = {n: 257 + k for k, n in enumerate(self.names)}
        self.vocab_size = 257 + len(self.names)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def special(self, name: str) -> int:
        return self.ids[name]

    def decode(self, ids) -> str:
        inv = {v: k for k, v in self.ids.items()}
        out, buf = [], bytearray()
        for i in (int(x) for x in ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(inv.get(i, "<|endoftext|>" if i == self.eod else f"<{i}>"))
        return "".join(out) + buf.decode("utf-8", errors="replace")

    @property
    def identity(self) -> dict:
        return {"kind": "byte", "vocab_size": self.vocab_size, "eod": self.eod, "sep": 10, "specials": self.ids}


class HFChatTokenizer:
    """A `data.text.tokenizer.HuggingFaceTokenizer` for chat: special tokens looked up in its vocabulary."""

    def __init__(self, tok) -> None:
        self.tok, self._raw = tok, tok._tok
        self.eod, self.vocab_size = tok.eod, tok.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._raw.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._raw.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def special(self, name: str) -> int:
        i = self._raw.token_to_id(name)
        if i is None:
            raise ValueError(f"the tokenizer {self.tok.tokenizer_model} has no {name!r} token, which this chat "
                             "template needs: pick the template that matches the tokenizer (--chat-template)")
        return i

    def decode(self, ids) -> str:
        return self.tok.decode(ids)

    @property
    def identity(self) -> dict:
        return {"kind": "HuggingFaceTokenizer", "vocab_size": self.vocab_size, "eod": self.eod,
                "tokenizer_model": self.tok.tokenizer_model}


@dataclass
class Rendered:
    ids: np.ndarray  # int32 [L], IMAGE_MARK per image
    mask: np.ndarray  # uint8 [L], 1 on supervised targets
    images: list[Image]  # in mark order


class _Builder:
    def __init__(self, tok) -> None:
        self.tok, self.ids, self.mask, self.images = tok, [], [], []

    def text(self, s: str, supervised: bool = False) -> None:
        ids = self.tok.encode(s) if s else []
        self.ids += ids
        self.mask += [int(supervised)] * len(ids)

    def special(self, name: str, supervised: bool = False) -> None:
        self.ids.append(self.tok.special(name))
        self.mask.append(int(supervised))

    def content(self, m: Message, supervised: bool) -> None:
        for p in m.parts:
            if isinstance(p, Image):
                self.ids.append(IMAGE_MARK)
                self.mask.append(0)
                self.images.append(p)
            else:
                self.text(p, supervised)

    def done(self) -> Rendered:
        return Rendered(np.array(self.ids, dtype=np.int32), np.array(self.mask, dtype=np.uint8), self.images)


def _chatml(msgs: list[Message], tok, generation_prompt: bool) -> Rendered:
    b = _Builder(tok)
    for m in msgs:
        sup = m.role == "assistant"
        b.special("<|im_start|>")
        b.text(f"{m.role}\n")
        b.content(m, sup)
        b.special("<|im_end|>", sup)
        b.text("\n")
    if generation_prompt:
        b.special("<|im_start|>")
        b.text("assistant\n")
    return b.done()


def _llama3_header(b: _Builder, role: str) -> None:
    b.special("<|start_header_id|>")
    b.text(role)
    b.special("<|end_header_id|>")
    b.text("\n\n")


def _llama3(msgs: list[Message], tok, generation_prompt: bool) -> Rendered:
    b = _Builder(tok)
    b.special("<|begin_of_text|>")
    for m in msgs:
        sup = m.role == "assistant"
        _llama3_header(b, m.role)
        b.content(m, sup)
        b.special("<|eot_id|>", sup)
    if generation_prompt:
        _llama3_header(b, "assistant")
    return b.done()


def render(msgs: list[Message], template: str, tok, *, generation_prompt: bool = False,
           chat_template: str | None = None) -> Rendered:
    """Token ids and loss mask of a conversation; `generation_prompt` appends the header of an assistant turn (for
    prompts the model answers)."""
    if template == "chatml":
        return _chatml(msgs, tok, generation_prompt)
    if template == "llama3":
        return _llama3(msgs, tok, generation_prompt)
    if template == "jinja":
        from omni_mega.data.conversations.jinja import render_jinja

        return render_jinja(msgs, chat_template, tok, generation_prompt)
    raise ValueError(f"chat template must be one of {', '.join(TEMPLATES)}, got {template!r}")


END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def end_of_turn(template: str, tok) -> int | None:
    """The id that closes an assistant turn (generation stops there); None for a Jinja template."""
    return tok.special(END_OF_TURN[template]) if template in END_OF_TURN else None


def chat_identity(tok, template: str) -> dict:
    """What a conversation dataset records about its tokens: the tokenizer, the template, and the id that closes an
    assistant turn (where generation stops)."""
    out = {**tok.identity, "template": template}
    eot = end_of_turn(template, tok)
    if eot is not None:
        out["end_of_turn"] = eot
    return out


def tokenizer_decoder(identity: dict):
    """text from ids, for a dataset's recorded tokenizer (the byte chat tokenizer or a tokenizer.json)."""
    if identity.get("kind") == "byte":
        return ByteChatTokenizer().decode
    from omni_mega.data.text.tokenizer import HuggingFaceTokenizer

    return HuggingFaceTokenizer(identity["tokenizer_model"]).decode
