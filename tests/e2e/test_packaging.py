"""The install says nothing alarming: the build backend, run on a copy of the project as
`pip install -e .` runs it, emits no warning (no licence-table deprecation, no
"Editable installation" notice)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BUILD = """
import json, sys, warnings
from setuptools import build_meta
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    name = build_meta.build_editable(sys.argv[1])
print(json.dumps({"wheel": name, "warnings": [str(w.message) for w in caught]}))
"""


def test_licence_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"][0]


def test_the_editable_build_emits_no_warning(tmp_path: Path) -> None:
    import json

    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    for package in ("mta", "campaign_client"):
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path / "dist")],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["wheel"].startswith("mta_sim-")
    assert result["warnings"] == []
    assert "Editable installation" not in done.stderr and "deprecated" not in done.stderr
