#!/usr/bin/env python
"""Image-text pairs -> omni_mega image-text shards. See omni_mega/data/multimodal/preprocess.py for what it does and
docs/multimodal_data.md for the format.

Example:
    python tools/preprocess_mmdata.py --input pairs.jsonl --output-dir data/mm --tokenizer-type byte --workers 2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_mega.data.multimodal.preprocess import main  # noqa: E402

if __name__ == "__main__":
    main()
