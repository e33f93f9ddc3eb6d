"""Built-in demo text: English from `pydoc_data.topics` (ships with Python), byte-level tokens (ids 0-255, EOD 256),
nothing downloaded. `DemoTextDocs` is the reader of the `demo_text` source kind."""

from __future__ import annotations

import functools

import numpy as np

from omni_mega.data.text.indexed import DocumentPieces

EOD = 256  # end-of-document id after the 256 byte values
VOCAB_SIZE = 257


@functools.cache
def _topic_docs() -> tuple[np.ndarray, ...]:
    from pydoc_data.topics import topics

    return tuple(np.frombuffer(topics[k].encode("utf-8"), dtype=np.uint8).astype(np.int64) for k in sorted(topics))


class DemoTextDocs:
    """pydoc_data.topics documents (sorted by topic name) as byte tokens + EOD, cut into pack-sized pieces
    (`omni_mega.data.text.indexed.DocumentPieces`: at most `max_tokens` tokens, overlapping by one), so the whole
    corpus is seen instead of 79 document beginnings (most topics are longer than a pack). `seed` rotates which piece
    is item 0, so two demo_text datasets of a mix with different seeds are different item orders."""

    eod = EOD

    def __init__(self, seed: int = 0, max_tokens: int | None = None) -> None:
        self.docs = _topic_docs()
        self.pieces = DocumentPieces(np.array([len(d) + 1 for d in self.docs]), max_tokens)
        self.shift = (int(seed) * 7919) % len(self.pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    def _item(self, i: int) -> int:
        return (i + self.shift) % len(self.pieces)

    def num_tokens(self, i: int) -> int:
        return self.pieces.num_tokens(self._item(i))

    def tokens(self, i: int) -> np.ndarray:
        """int64 [num_tokens(i)] byte ids of item i (a document's last piece ends with EOD)."""
        j = self._item(i)
        d, start = self.pieces.locate(j)
        return np.append(self.docs[d], self.eod)[start: start + self.pieces.num_tokens(j)]


def decode(ids) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")
