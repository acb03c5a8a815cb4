"""`python -m netc ARGS` -> the `netc` command (so `torchrun -m netc train FILE` works)."""

import sys

from netc.runtime.cli import main

sys.exit(main())
