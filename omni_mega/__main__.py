import sys

from omni_mega.cli import main

sys.exit(main())
