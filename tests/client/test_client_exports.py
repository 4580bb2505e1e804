"""The package's public surface: `__all__` is exactly what `campaign_client` exports, every
name in it resolves, and `from campaign_client import *` works (httpx keeps the same test)."""

from __future__ import annotations

import subprocess
import sys

import campaign_client


def test_all_is_exactly_the_exported_names() -> None:
    exported = set(campaign_client._EXPORTS) | {"kpis"}  # kpis: the function, defined here
    assert sorted(campaign_client.__all__) == sorted(exported)
    assert len(campaign_client.__all__) == len(set(campaign_client.__all__))
    for name in campaign_client.__all__:
        value = getattr(campaign_client, name)
        assert not isinstance(value, type(sys)), f"{name} is a module, not the exported name"


def test_star_import_binds_every_name_of_all() -> None:
    code = (
        "from campaign_client import *\n"
        "import campaign_client\n"
        "missing = [n for n in campaign_client.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "print(len(campaign_client.__all__))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(campaign_client.__all__)
