"""Peers for the relay benchmark: Postfix (and Postfix + OpenDKIM) as loopback relays.

Each peer runs from a private config directory (`postfix -c DIR`, its own queue
directory, a listener on a loopback port of its own, `relayhost` = the sink), so
it touches neither /etc/postfix nor port 25, and is stopped afterwards. OpenDKIM
runs as a milter on its own loopback port, signing rsa-sha256 relaxed/relaxed with
the same RSA-2048 key the MTA signs with. When the programs are not installed,
`available()` says why and the benchmark runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
OPENDKIM = "/usr/sbin/opendkim"
_TICKS = os.sysconf("SC_CLK_TCK")


def available() -> tuple[bool, bool, str]:
    """(Postfix usable, OpenDKIM usable, a note when either is missing)."""
    postfix = shutil.which("postfix") or (POSTFIX if Path(POSTFIX).exists() else None)
    opendkim = shutil.which("opendkim") or (OPENDKIM if Path(OPENDKIM).exists() else None)
    notes = []
    if postfix is None:
        notes.append("Postfix is not installed")
    elif os.geteuid() != 0:
        notes.append("Postfix needs root to start")
        postfix = None
    if opendkim is None:
        notes.append("OpenDKIM is not installed")
    note = ""
    if notes:
        note = (
            "; ".join(notes) + ": peer comparison skipped (apt-get install postfix opendkim)"
        )
    return postfix is not None, postfix is not None and opendkim is not None, note


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and every descendant, including children already reaped (cutime):
    monotonic as long as `root` lives, so a difference of two readings is the work done."""
    tree = _children()
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo.extend(tree.get(pid, []))
    return total / _TICKS


_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    """A private Postfix instance relaying everything it accepts to `relayhost`."""

    directory: Path
    port: int
    relayhost: tuple[str, int]
    milter_port: int | None = None
    opendkim: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def _write_config(self, sessions: int) -> None:
        conf = self.directory / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        host, port = self.relayhost
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.directory / 'queue'}",
            f"data_directory = {self.directory / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = peer.bench.test",
            "mydestination =",
            "local_recipient_maps =",
            f"relayhost = [{host}]:{port}",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtputf8_enable = no",
            "biff = no",
            f"maillog_file = {self.directory / 'maillog'}",
            f"maillog_file_prefixes = {self.directory}",
            f"default_process_limit = {max(100, sessions + 20)}",
            "smtp_destination_concurrency_limit = 20",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            "message_size_limit = 52428800",
        ]
        if self.milter_port is not None:
            lines += [
                f"smtpd_milters = inet:127.0.0.1:{self.milter_port}",
                "non_smtpd_milters = $smtpd_milters",
                "milter_default_action = tempfail",
                "milter_protocol = 6",
            ]
        (conf / "main.cf").write_text("\n".join(lines) + "\n")
        (conf / "master.cf").write_text(_MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def _write_opendkim(self, domain: str, selector: str, key: Path) -> Path:
        assert self.milter_port is not None
        path = self.directory / "opendkim.conf"
        path.write_text(
            "\n".join(
                [
                    "Syslog no",
                    "Mode s",
                    f"Domain {domain}",
                    f"Selector {selector}",
                    f"KeyFile {key}",
                    "Canonicalization relaxed/relaxed",
                    "SignatureAlgorithm rsa-sha256",
                    "RequireSafeKeys no",
                    "UserID postfix",
                    f"Socket inet:{self.milter_port}@127.0.0.1",
                    f"PidFile {self.directory / 'opendkim.pid'}",
                    "InternalHosts 127.0.0.0/8",
                ]
            )
            + "\n"
        )
        return path

    def master_pid(self) -> int:
        text = (self.directory / "queue" / "pid" / "master.pid").read_text()
        return int(text.strip())

    def cpu_seconds(self) -> float:
        """Postfix's processes (and OpenDKIM's) so far, children already gone included."""
        total = tree_cpu_seconds(self.master_pid())
        if self.opendkim is not None:
            total += tree_cpu_seconds(self.opendkim.pid)
        return total

    def queued(self) -> int:
        """Messages still in Postfix's queue (not yet handed to the relayhost)."""
        count = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.directory / "queue" / name):
                count += len(files)
        return count

    def deferred(self) -> int:
        return sum(len(f) for _, _, f in os.walk(self.directory / "queue" / "deferred"))

    async def start(
        self, sessions: int, dkim: tuple[str, str, Path] | None = None
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if dkim is not None:
            domain, selector, key = dkim
            self.milter_port = free_port()
            shutil.chown(key, "postfix")
            conf = self._write_opendkim(domain, selector, key)
            self.opendkim = subprocess.Popen(
                [OPENDKIM, "-f", "-x", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await _wait_port(self.milter_port)
        self._write_config(sessions)
        self.directory.chmod(0o755)
        (self.directory / "queue").mkdir(exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        shutil.chown(self.directory / "data", "postfix")
        conf = str(self.directory / "conf")
        await _run(POSTFIX, "-c", conf, "check")
        await _run(POSTFIX, "-c", conf, "start")
        await _wait_port(self.port)

    async def stop(self) -> None:
        conf = str(self.directory / "conf")
        with contextlib.suppress(RuntimeError):
            await _run(POSTFIX, "-c", conf, "stop")
        if self.opendkim is not None:
            self.opendkim.terminate()
            try:
                self.opendkim.wait(10)
            except subprocess.TimeoutExpired:
                self.opendkim.kill()
                self.opendkim.wait()


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {out.decode(errors='replace').strip()}")


async def _wait_port(port: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.1)
