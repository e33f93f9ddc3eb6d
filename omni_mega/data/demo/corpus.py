"""The embedded demo corpus: English text that ships with Python (`pydoc_data.topics`, ~465 KB), so tests, the demo
and the default tokenizer need no download.

Documents are built deterministically: topics in sorted order, each topic's paragraphs grouped into documents of
about `target_chars` characters (a paragraph is never split).
"""

from __future__ import annotations

import json
import os


def demo_documents(target_chars: int = 1000) -> list[str]:
    """List of documents (str), about `target_chars` each; `target_chars <= 0` gives one document per topic."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    docs: list[str] = []
    for name in sorted(topics):
        text = topics[name].strip()
        if target_chars <= 0:
            docs.append(text)
            continue
        current: list[str] = []
        size = 0
        for para in text.split("\n\n"):
            if not para.strip():
                continue
            current.append(para)
            size += len(para) + 2
            if size >= target_chars:
                docs.append("\n\n".join(current))
                current, size = [], 0
        if current:
            docs.append("\n\n".join(current))
    return docs


def write_jsonl(path: str, docs: list[str], key: str = "text") -> str:
    """Writes one JSON object per line ({key: doc}); returns path. Written to a temp name, then renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({key: doc}) + "\n")
    os.replace(tmp, path)
    return path


def write_demo_jsonl(path: str, target_chars: int = 1000, key: str = "text") -> str:
    """The demo corpus as JSONL (one document per line)."""
    return write_jsonl(path, demo_documents(target_chars), key)
