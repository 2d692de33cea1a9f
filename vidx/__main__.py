"""`python -m vidx` runs the CLI."""

import sys

from vidx.cli import main

sys.exit(main())
