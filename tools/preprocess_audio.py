#!/usr/bin/env python
"""Audio-transcript pairs -> omni_mega audio shards. See omni_mega/data/audio/preprocess.py for what it does and
omni_mega/data/audio/shards.py for the format.

Example:
    python tools/preprocess_audio.py --input clips.jsonl --output-dir data/asr --tokenizer-type byte --workers 2
    python tools/preprocess_audio.py --input wavs/ --output-dir data/asr     # a folder of .wav/.flac + same-stem .txt
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_mega.data.audio.preprocess import main  # noqa: E402

if __name__ == "__main__":
    main()
