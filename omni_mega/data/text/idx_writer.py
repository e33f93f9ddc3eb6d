"""Megatron's indexed dataset format (`.bin` + `.idx`), written with numpy alone.

megatron-core's `IndexedDatasetBuilder` writes the same bytes, but importing it imports torch and megatron-core
(~3-5 s of CPU on this machine, most of a small run's wall time), and it keeps every sequence length in a Python
list. The layout, as megatron-core 0.16.1 writes and reads it (`megatron/core/datasets/indexed_dataset.py`,
`_IndexWriter.write` / `_IndexReader`; tests/data/test_preprocess.py checks the bytes against it):

    .bin  the tokens of every sequence back to back, in the dataset's dtype, nothing else
    .idx  b"MMIDIDX\\x00\\x00"                     9 bytes
          <Q  version = 1                         8
          <B  dtype code (DTYPE_CODES)            1
          <Q  sequence count S                    8
          <Q  document-index count D + 1          8   (the length of the array below: documents + 1)
          <i4 [S]  tokens per sequence
          <i8 [S]  byte offset of each sequence in the .bin (0, then running sums of length * itemsize)
          <i8 [D + 1]  sequence index where each document starts, from 0, ending with S
          (no sequence modes: those are written only for multimodal datasets)

All little-endian, no padding, no alignment.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron.core.datasets.indexed_dataset.DType
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}


def optimal_dtype(vocab_size: int | None) -> np.dtype:
    """megatron-core's `DType.optimal_dtype`: uint16 when the ids fit well below 65536, else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


class IndexedWriter:
    """Appends documents to a .bin as they come; the index is written by `finalize` (or `concatenate`).

    `add_documents(tokens, seq_lengths, nseq_per_doc)` = one megatron `add_document(ids, lengths)` per document,
    for many documents at once."""

    def __init__(self, bin_path: str, dtype) -> None:
        self.bin_path, self.dtype = bin_path, np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"IndexedWriter: dtype {self.dtype} is not one Megatron's format stores")
        self.data_file = open(bin_path, "wb")
        self._lengths: list[np.ndarray] = []  # int32 chunks
        self._doc_ends: list[np.ndarray] = []  # int64 chunks: sequence index after each document
        self.sequences = 0

    def add_documents(self, tokens: np.ndarray, seq_lengths: np.ndarray, nseq_per_doc: np.ndarray) -> None:
        if tokens.dtype != self.dtype:
            raise ValueError(f"tokens dtype {tokens.dtype} != writer dtype {self.dtype}")
        self.data_file.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        seq_lengths = np.asarray(seq_lengths, dtype=np.int64)
        if seq_lengths.size and (seq_lengths.min() < 0 or seq_lengths.max() > np.iinfo(np.int32).max):
            raise ValueError("sequence lengths must fit int32")
        self._lengths.append(seq_lengths.astype(np.int32))
        self._doc_ends.append(self.sequences + np.cumsum(np.asarray(nseq_per_doc, dtype=np.int64)))
        self.sequences += int(seq_lengths.size)

    def add_document(self, ids, lengths) -> None:
        """megatron-core's `IndexedDatasetBuilder.add_document`, one document."""
        self.add_documents(np.asarray(ids, dtype=self.dtype), np.asarray(lengths, dtype=np.int64),
                           np.array([len(lengths)], dtype=np.int64))

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(sequence lengths int32 [S], document indices int64 [D + 1])."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int32)
        docs = np.concatenate([np.zeros(1, dtype=np.int64), *self._doc_ends])
        return lengths, docs

    def close(self) -> None:
        if not self.data_file.closed:
            self.data_file.close()

    def finalize(self, idx_path: str) -> None:
        self.close()
        write_index(idx_path, self.dtype, *self.index_arrays())


def write_index(idx_path: str, dtype, lengths: np.ndarray, document_indices: np.ndarray) -> None:
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype="<i4")
    pointers = np.zeros(lengths.size, dtype="<i8")
    if lengths.size > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    document_indices = np.asarray(document_indices, dtype="<i8")
    with open(idx_path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", lengths.size))
        f.write(struct.pack("<Q", document_indices.size))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(document_indices.tobytes())


def read_index(idx_path: str) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
    """(dtype, sequence lengths, sequence pointers, document indices) of an .idx; ValueError when it is not one."""
    with open(idx_path, "rb") as f:
        head = f.read(34)
        if len(head) < 34 or head[:9] != INDEX_HEADER:
            raise ValueError(f"{idx_path}: not a Megatron .idx (bad header)")
        version, code, nseq, ndoc = struct.unpack("<QBQQ", head[9:])
        if version != INDEX_VERSION:
            raise ValueError(f"{idx_path}: .idx version {version}, expected {INDEX_VERSION}")
        dtype = {c: d for d, c in DTYPE_CODES.items()}.get(code)
        if dtype is None:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        lengths = np.frombuffer(f.read(4 * nseq), dtype="<i4")
        pointers = np.frombuffer(f.read(8 * nseq), dtype="<i8")
        docs = np.frombuffer(f.read(8 * ndoc), dtype="<i8")
    if lengths.size != nseq or pointers.size != nseq or docs.size != ndoc:
        raise ValueError(f"{idx_path}: truncated .idx")
    return dtype, lengths, pointers, docs


def concatenate(writers: list[IndexedWriter], bin_path: str, idx_path: str) -> None:
    """The writers' datasets one after the other, as megatron-core's `add_index` merges Megatron-LM's partitions:
    the .bin files copied in order, sequence lengths concatenated, document indices shifted by the sequences
    before them."""
    if not writers:
        raise ValueError("concatenate: no datasets")
    dtype = writers[0].dtype
    lengths, docs, offset = [], [np.zeros(1, dtype=np.int64)], 0
    with open(bin_path, "wb") as out:
        for w in writers:
            if w.dtype != dtype:
                raise ValueError(f"concatenate: dtypes differ ({w.dtype} != {dtype})")
            w.close()
            with open(w.bin_path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            seq, doc = w.index_arrays()
            lengths.append(seq)
            docs.append(offset + doc[1:])
            offset += seq.size
    write_index(idx_path, dtype, np.concatenate(lengths), np.concatenate(docs))
