"""`python -m mta` runs the `mta` command."""

import sys

from mta.cli import main

sys.exit(main())
