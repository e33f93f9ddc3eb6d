#!/usr/bin/env python
"""Megatron-LM-compatible preprocessing: JSONL -> .bin/.idx. See omni_mega/data/text/preprocess.py for what it does.

Example:
    python tools/preprocess_data.py --input data.jsonl --output-prefix out/data --tokenizer-type GPT2BPETokenizer \
        --vocab-file encoder.json --merge-file vocab.bpe --append-eod --workers 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# numpy's OpenBLAS starts a spinning thread per core at import; nothing here uses BLAS (~3% of CPU on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from omni_mega.data.text.preprocess import main  # noqa: E402

if __name__ == "__main__":
    main()
