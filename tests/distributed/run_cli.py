"""Runs `omni-mega ARGS...` in each torchrun rank (for tests that need the CLI under several processes)."""

import sys

from omni_mega.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
