"""A tokenizer's own Jinja `chat_template` (as in tokenizer_config.json), rendered the way transformers' templates
expect (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`), with the loss mask derived from text spans.

Images: each image part is rendered as a private-use sentinel character the template passes through as text; the
rendered text is split there, each piece is tokenised alone, and an IMAGE_MARK id goes between the pieces.
Supervised text: for every assistant turn k, render(messages[:k], generation prompt) must be a prefix of
render(messages[:k + 1]), which must be a prefix of the whole rendering; the characters in between are the turn's
content and end-of-turn, less trailing whitespace. A template for which these prefixes do not hold (one that
rewrites earlier turns when later ones are added) is refused with a clear error rather than masked wrongly.
"""

from __future__ import annotations

import numpy as np

from omni_mega.data.conversations.messages import Image, Message
from omni_mega.data.conversations.shards import IMAGE_MARK

SENTINEL = "\ue000"  # a private-use code point: never in real text, passed through as text by templates


def _as_dicts(msgs: list[Message]) -> list[dict]:
    out = []
    for m in msgs:
        if all(isinstance(p, str) for p in m.parts):
            out.append({"role": m.role, "content": "".join(m.parts)})
        else:
            out.append({"role": m.role, "content": [{"type": "text", "text": SENTINEL if isinstance(p, Image) else p}
                                                    for p in m.parts]})
    return out


def _renderer(chat_template: str, tok):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(chat_template)
    names = {"bos_token": "", "eos_token": tok.tok.decode([tok.eod]) if hasattr(tok, "tok") else ""}
    return lambda msgs, gen: template.render(messages=_as_dicts(msgs), add_generation_prompt=gen, **names)


def render_jinja(msgs: list[Message], chat_template: str | None, tok, generation_prompt: bool):
    from omni_mega.data.conversations.templates import Rendered

    if not chat_template:
        raise ValueError("chat template 'jinja' needs the tokenizer's chat_template (tokenizer_config.json)")
    if not hasattr(tok, "encode_offsets"):
        raise ValueError("chat template 'jinja' needs a Hugging Face tokenizer (character offsets)")
    render = _renderer(chat_template, tok)
    full = render(msgs, generation_prompt)
    spans = []
    for k, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        before, after = render(msgs[:k], True), render(msgs[:k + 1], False)
        if not (after.startswith(before) and full.startswith(after)):
            raise ValueError("chat template: rendering a conversation turn by turn does not extend the earlier "
                             "rendering, so the assistant text cannot be located; use --chat-template chatml or "
                             "llama3")
        spans.append((len(before), len(after.rstrip())))
    ids, mask, images, at = [], [], [], 0
    for j, piece in enumerate(full.split(SENTINEL)):
        if j:
            ids.append(IMAGE_MARK)
            mask.append(0)
            images.append(None)
            at += len(SENTINEL)
        p_ids, offsets = tok.encode_offsets(piece)
        ids += p_ids
        mask += [int(any(a <= at + s and at + e <= b for a, b in spans)) for s, e in offsets]
        at += len(piece)
    real = [p for m in msgs for p in m.parts if isinstance(p, Image)]
    if len(images) != len(real):
        raise ValueError(f"chat template: {len(real)} images in the messages but the template rendered "
                         f"{len(images)}")
    return Rendered(np.array(ids, dtype=np.int32), np.array(mask, dtype=np.uint8), real)
