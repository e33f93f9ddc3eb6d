"""Conversations, preference pairs or prompts (JSONL) -> conversation shards. See
omni_mega/data/conversations/preprocess.py for what it does, and `--help` for the flags."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_mega.data.conversations.preprocess import main  # noqa: E402

if __name__ == "__main__":
    main()
