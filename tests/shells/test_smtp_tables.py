"""aiosmtpd builds its command, AUTH and hook tables from dir() on every connection; our
short dir() (the hook names only, listed once per class) must give the same tables."""

from pathlib import Path

from mta.clock import RealClock
from mta.ingress.handler import IngressHandler, server_factory
from tests.helpers import auth_config


def full(obj: object, prefix: str) -> set[str]:
    return {name.removeprefix(prefix) for name in object.__dir__(obj) if name.startswith(prefix)}


async def test_the_short_dir_gives_aiosmtpd_every_command_mechanism_and_hook(
    tmp_path: Path,
) -> None:
    config, _ = auth_config(tmp_path)  # AUTH users: PLAIN and LOGIN are offered
    handler = IngressHandler(config.smtp, None, RealClock(), validity=3600.0, node="n")  # type: ignore[arg-type]
    server = server_factory(handler, None)()
    assert set(server._smtp_methods) == full(server, "smtp_")
    assert {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS", "AUTH", "QUIT"} <= set(server._smtp_methods)
    assert set(server._handle_hooks) == full(handler, "handle_") == {"MAIL", "RCPT", "DATA"}
    assert set(server._auth_methods) == {"PLAIN", "LOGIN"}
