"""Conversation records as users write them, parsed into one normalised form (and bad records named, never guessed).

Accepted JSONL records:
- OpenAI / HF chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": str | [{"type": "text", "text":
  ...}, {"type": "image", "image": path}]}]}`;
- LLaVA / ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": "... <image> ..."}], "image": path
  or [paths]}`: the k-th `<image>` is the k-th image; images without any `<image>` go in front of the first user
  turn (LLaVA's convention);
- preference pairs: `{"prompt": messages, "chosen": message | str, "rejected": message | str}`;
- prompts with answers: `{"messages": [...], "answer": "42"}`.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_TAG = "<image>"

# Reasons a record is refused (counted with its line by the preprocessing tool).
NOT_A_CONVERSATION, UNKNOWN_ROLE, NO_ASSISTANT, EMPTY_CONTENT, BAD_IMAGE_REF, LAST_NOT_ASSISTANT = (
    "not_a_conversation", "unknown_role", "no_assistant_turn", "empty_content", "bad_image_reference",
    "last_turn_not_assistant")


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Image:
    path: str  # as written in the record (the tool resolves it against the input file's directory)


@dataclass
class Message:
    role: str
    parts: list  # str | Image, in order

    @property
    def images(self) -> list[Image]:
        return [p for p in self.parts if isinstance(p, Image)]


def _parts(content, where: str) -> list:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise BadRecord(NOT_A_CONVERSATION, f"{where}: content must be a string or a list of parts")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "image" and isinstance(part.get("image"), str) and part["image"]:
            out.append(Image(part["image"]))
        else:
            raise BadRecord(BAD_IMAGE_REF if kind == "image" else NOT_A_CONVERSATION,
                            f"{where}: unsupported content part {str(part)[:80]!r}")
    return out


def _message(m, where: str) -> Message:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise BadRecord(NOT_A_CONVERSATION, f"{where}: a message needs 'role' and 'content'")
    if m["role"] not in ROLES:
        raise BadRecord(UNKNOWN_ROLE, f"{where}: role {m['role']!r} (expected one of {', '.join(ROLES)})")
    msg = Message(m["role"], _parts(m["content"], where))
    if not any(isinstance(p, Image) or p.strip() for p in msg.parts):
        raise BadRecord(EMPTY_CONTENT, f"{where}: {msg.role} message has no text and no image")
    return msg


def _sharegpt(rec: dict) -> list[Message]:
    images = rec.get("image", [])
    images = [images] if isinstance(images, str) else list(images)
    if any(not isinstance(p, str) or not p for p in images):
        raise BadRecord(BAD_IMAGE_REF, f"'image' must be a path or a list of paths, got {str(rec.get('image'))[:80]}")
    msgs, used = [], 0
    for k, turn in enumerate(rec["conversations"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadRecord(NOT_A_CONVERSATION, f"conversations[{k}]: needs 'from' and a string 'value'")
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise BadRecord(UNKNOWN_ROLE, f"conversations[{k}]: from {turn.get('from')!r} (expected one of "
                                          f"{', '.join(SHAREGPT_ROLES)})")
        pieces = turn["value"].split(IMAGE_TAG)
        parts: list = []
        for j, text in enumerate(pieces):
            if j:
                if used >= len(images):
                    raise BadRecord(BAD_IMAGE_REF, f"conversations[{k}]: more {IMAGE_TAG} tags than images "
                                                   f"({len(images)})")
                parts.append(Image(images[used]))
                used += 1
            if text.strip():
                parts.append(text.strip("\n") if j or len(pieces) > 1 else text)
        msgs.append(Message(role, parts))
    if used == 0 and images:  # LLaVA puts the image before the first question when no tag says where
        first = next((m for m in msgs if m.role == "user"), None)
        if first is None:
            raise BadRecord(BAD_IMAGE_REF, "images given but no user turn to show them in")
        first.parts[:0] = [Image(p) for p in images]
    elif used != len(images):
        raise BadRecord(BAD_IMAGE_REF, f"{len(images)} images but {used} {IMAGE_TAG} tags")
    for k, m in enumerate(msgs):
        if not m.parts:
            raise BadRecord(EMPTY_CONTENT, f"conversations[{k}]: {m.role} turn is empty")
    return msgs


def parse_messages(rec) -> list[Message]:
    """The messages of a conversation record (either format). Raises BadRecord."""
    if not isinstance(rec, dict):
        raise BadRecord(NOT_A_CONVERSATION, f"a record must be a JSON object, got {type(rec).__name__}")
    if isinstance(rec.get("messages"), list):
        msgs = [_message(m, f"messages[{k}]") for k, m in enumerate(rec["messages"])]
    elif isinstance(rec.get("conversations"), list):
        msgs = _sharegpt(rec)
    else:
        raise BadRecord(NOT_A_CONVERSATION, "no 'messages' or 'conversations' list")
    if not msgs:
        raise BadRecord(EMPTY_CONTENT, "the conversation has no messages")
    return msgs


def parse_sft(rec) -> list[Message]:
    """A supervised conversation: at least one assistant turn to learn from."""
    msgs = parse_messages(rec)
    if not any(m.role == "assistant" for m in msgs):
        raise BadRecord(NO_ASSISTANT, "no assistant turn: nothing to supervise")
    return msgs


def _reply(x, where: str) -> list[Message]:
    if isinstance(x, str):
        x = {"role": "assistant", "content": x}
    msgs = [_message(m, f"{where}[{k}]") for k, m in enumerate(x)] if isinstance(x, list) else [_message(x, where)]
    if msgs[-1].role != "assistant":
        raise BadRecord(LAST_NOT_ASSISTANT, f"{where}: must end with an assistant message")
    return msgs


def parse_preference(rec) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen reply, rejected reply) of a preference pair; images belong in the prompt."""
    if not isinstance(rec, dict) or not all(k in rec for k in ("prompt", "chosen", "rejected")):
        raise BadRecord(NOT_A_CONVERSATION, "a preference record needs 'prompt', 'chosen' and 'rejected'")
    prompt = parse_messages({"messages": rec["prompt"]}) if isinstance(rec["prompt"], list) else \
        parse_messages({"messages": [{"role": "user", "content": rec["prompt"]}]})
    chosen, rejected = _reply(rec["chosen"], "chosen"), _reply(rec["rejected"], "rejected")
    if any(m.images for m in chosen + rejected):
        raise BadRecord(BAD_IMAGE_REF, "images belong in the prompt, not in the replies")
    return prompt, chosen, rejected


def parse_prompt(rec) -> tuple[list[Message], str]:
    """(messages ending with a user turn, the verifiable answer) of a prompt record."""
    msgs = parse_messages(rec)
    answer = rec.get("answer")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or str(answer).strip() == "":
        raise BadRecord(NOT_A_CONVERSATION, "a prompt record needs a non-empty 'answer'")
    if msgs[-1].role == "assistant":
        raise BadRecord(LAST_NOT_ASSISTANT, "a prompt must end with a user turn (the model answers it)")
    return msgs, str(answer)
