"""``python -m hyperdm`` runs the command line (see ``hyperdm --help``)."""

import sys

from .distill.cli import main

sys.exit(main())
