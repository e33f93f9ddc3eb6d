"""What the preprocessing tools share on the command line (tools/preprocess_data.py, preprocess_mmdata.py,
preprocess_audio.py, preprocess_conversations.py): the tokenizer arguments, and how a run ends when it cannot or must
not produce a dataset: one line on stderr, no traceback, exit 2 (fix the command line or the files) or 1 (nothing
to write)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

TOKENIZER_TYPES = ("byte", "GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer")


class PreprocessError(Exception):
    """A run that cannot or must not produce a dataset; printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def add_tokenizer_args(g: argparse._ActionsContainer, types=TOKENIZER_TYPES, default: str | None = "byte") -> None:
    kw = {"default": default} if default else {"required": True}
    g.add_argument("--tokenizer-type", choices=list(types), **kw)
    g.add_argument("--tokenizer-model", help="HuggingFaceTokenizer: local tokenizer.json or its directory")
    if "GPT2BPETokenizer" in types:
        g.add_argument("--vocab-file", help="GPT2BPETokenizer: encoder.json")
        g.add_argument("--merge-file", help="GPT2BPETokenizer: vocab.bpe")
    if "NullTokenizer" in types:
        g.add_argument("--vocab-size", type=int, help="NullTokenizer: number of ids before eod")


def fail(message: str, code: int, tool: str) -> None:
    """One line on stderr, no traceback, exit `code`."""
    print(f"{os.path.basename(sys.argv[0]) or tool}: error: {message}", file=sys.stderr)
    sys.exit(code)


def run_tool(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace, tool: str) -> dict:
    """`run(args)`, with PreprocessError, bad files and bad arguments (ValueError: TokenizerFileError is one) turned
    into `fail`."""
    try:
        return run(args)
    except PreprocessError as e:
        fail(str(e), e.code, tool)
    except (ValueError, OSError) as e:
        fail(str(e) if isinstance(e, ValueError) else f"{e.filename}: {e.strerror}", 2, tool)
