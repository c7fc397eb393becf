"""``python -m anxiao`` runs the CLI."""

import sys

from anxiao.cli import main

sys.exit(main())
