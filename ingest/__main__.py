"""`python -m ingest`: see `ingest._cli`."""

import sys

from ingest._cli import main

sys.exit(main())
