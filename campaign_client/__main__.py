"""`python -m campaign_client ...`: the same as the `campaign-client` command."""

from __future__ import annotations

import sys

from campaign_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
