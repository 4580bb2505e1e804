"""`python -m mta` runs the `mta` command."""

import sys

from mta.cli.main import main

sys.exit(main())
