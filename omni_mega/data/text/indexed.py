"""Documents as pack-sized pieces: the reader of Megatron indexed datasets (`.bin/.idx`, written by
`tools/preprocess_data.py` or Megatron-LM's own tool) and the piece arithmetic every text reader shares.

A document of n tokens (its EOD included) is cut into pieces of at most S + 1 tokens that overlap by one token:
piece k = tokens[k * S : k * S + S + 1], k = 0 .. ceil((n - 1) / S) - 1. A piece takes at most S positions of a
pack (inputs piece[:-1], labels piece[1:]), so every token of a long document is predicted exactly once and nothing
is truncated away; only a document's last piece ends with EOD. The piece index is one int64 per document (a
cumulative count), so a corpus of N documents costs 8N bytes, whatever the pack length.
"""

from __future__ import annotations

import numpy as np


class DocumentPieces:
    """Item i -> (document, first token) over documents of `lengths` tokens (EOD included), pieces of at most
    `max_tokens` tokens (None: whole documents)."""

    def __init__(self, lengths: np.ndarray, max_tokens: int | None) -> None:
        if max_tokens is not None and max_tokens < 2:
            raise ValueError(f"DocumentPieces: max_tokens must be >= 2, got {max_tokens}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = max_tokens
        if max_tokens is None:
            per_doc = np.ones_like(self.lengths)
        else:  # a document of n <= 1 tokens still counts as one (empty) piece: the packer counts and skips it
            per_doc = np.maximum(1, -(-(self.lengths - 1) // (max_tokens - 1)))
        self.cum = np.cumsum(per_doc)

    def __len__(self) -> int:
        return int(self.cum[-1]) if self.cum.size else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(document, first token) of piece i."""
        if not 0 <= i < len(self):
            raise IndexError(f"piece {i} out of range for {len(self)} pieces")
        doc = int(np.searchsorted(self.cum, i, side="right"))
        k = i - (int(self.cum[doc - 1]) if doc else 0)
        return doc, k * (self.max_tokens - 1) if self.max_tokens else 0

    def num_tokens(self, i: int) -> int:
        doc, start = self.locate(i)
        n = int(self.lengths[doc]) - start
        return min(n, self.max_tokens) if self.max_tokens else n


class IndexedDocs:
    """A Megatron indexed dataset (prefix without .bin/.idx) as pack-sized pieces of its documents.

    A document is the run of sequences the index groups into it (one sequence each unless preprocessed with
    --split-sentences); its tokens are contiguous in the .bin, read through a memory map. eod: the tokenizer's
    end-of-document id, appended to documents that do not end with it (preprocessed without --append-eod); None
    leaves documents as stored. seq_length: the pack length (None: whole documents)."""

    def __init__(self, prefix: str, eod: int | None, seq_length: int | None = None) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        index = IndexedDataset(prefix).index  # megatron-core's reader validates the .idx header and version
        docs = np.asarray(index.document_indices, dtype=np.int64)
        seq_len = np.asarray(index.sequence_lengths, dtype=np.int64)
        itemsize = np.dtype(index.dtype).itemsize
        first, last = docs[:-1], docs[1:]
        cum = np.concatenate([[0], np.cumsum(seq_len)])
        self.start = np.asarray(index.sequence_pointers, dtype=np.int64)[np.minimum(first, len(seq_len) - 1)] \
            // itemsize if len(seq_len) else np.zeros(len(first), dtype=np.int64)
        self.stored = cum[last] - cum[first]  # tokens per document
        self.bin = np.memmap(f"{prefix}.bin", dtype=index.dtype, mode="r")
        self.eod = None if eod is None else int(eod)
        lengths = self.stored.copy()
        if self.eod is not None:
            nonempty = self.stored > 0
            ends = self.bin[(self.start + self.stored - 1)[nonempty]] if nonempty.any() else np.zeros(0)
            missing = np.ones(len(lengths), dtype=bool)
            missing[nonempty] = ends != self.eod
            lengths += missing
        self.pieces = DocumentPieces(lengths, None if seq_length is None else seq_length + 1)

    def __len__(self) -> int:
        return len(self.pieces)

    def num_tokens(self, i: int) -> int:
        return self.pieces.num_tokens(i)

    def tokens(self, i: int) -> np.ndarray:
        """int64 [num_tokens(i)] ids of piece i."""
        doc, start = self.pieces.locate(i)
        n = self.pieces.num_tokens(i)
        take = max(0, min(n, int(self.stored[doc]) - start))
        at = int(self.start[doc]) + start
        out = np.asarray(self.bin[at:at + take], dtype=np.int64)
        if take < n:  # the appended EOD
            out = np.append(out, self.eod)
        return out
