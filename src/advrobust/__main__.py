"""``python -m advrobust`` (and ``torchrun -m advrobust``) runs the CLI."""

import sys

from advrobust.cli import run

sys.exit(run())
