"""``python -m streams.cli``: the carwatch command."""

import sys

from streams.cli import main

sys.exit(main())
