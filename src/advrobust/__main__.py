"""``python -m advrobust`` (and ``torchrun -m advrobust``) runs the CLI."""

import sys

from advrobust.cli import main

sys.exit(main())
