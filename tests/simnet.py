"""A small simulated internet for tests: its own loopback /24 per test, the base zone
(sender mailbox, null MX, NXDOMAIN, SERVFAIL, timeout, implicit MX) and persona TOML.

Each test gets 127.3.N.0/24: personas bind 127.3.N.x on one port picked by the first
bind (port 0), the stub DNS and HTTP on port 0.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from mta.sim.config import SimConfig, parse_sim_config

_nets = itertools.count(1 + os.getpid() % 120)


def new_net() -> str:
    """A loopback /24 prefix ("127.3.N") no other test of this run uses at the same time."""
    return f"127.3.{next(_nets) % 250 + 1}"

BASE = """
[sim]
seed = {seed}
smtp_port = 0
dns_listen = "{net}.1:0"
http_listen = "{net}.1:0"
mta_submit = ""
stall_max = "2s"
dns_ttl = "1h"

[[hosts]]
name = "mx.campaign.test"
address = "{net}.20"

[[domains]]
name = "campaign.test"
mx = ["mx.campaign.test"]

[[domains]]
name = "nullmx.test"
kind = "null_mx"

[[domains]]
name = "nxdomain.test"
kind = "nxdomain"

[[domains]]
name = "dnsfail.test"
kind = "servfail"

[[domains]]
name = "slowdns.test"
kind = "timeout"

[[domains]]
name = "implicit.test"
kind = "address"
address = "{net}.15"
"""

ISP = """
[[personas]]
name = "isp"
domains = ["isp.test", "implicit.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
[personas.mailboxes]
unknown = ["nobody", "re:^unknown"]
full = ["re:^full"]
disabled = ["re:^(disabled|inactive)"]
"""


def sim_config(net: str, personas: str = ISP, seed: int = 1) -> SimConfig:
    text = (BASE + personas).replace("{net}", net).replace("{seed}", str(seed))
    return parse_sim_config(text, "test isps.toml")


MX_RULE = {
    "name": "sim-tests",
    "hosts": ["*.test"],
    "max_connections": 20,
    "max_messages_per_connection": 100,
    "rate": 0,
    "rampup_scale": 0,
    "inherit_adaptive": False,
}


def toml_table(values: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in values.items())


# Personas the adaptive and cluster tests share: a Gmail-like 100/min limit with Gmail's
# throttling text, and Yahoo's [TSS04] deferral (which the built-in MX rules suspend on).
GMAIL = '''
[[personas]]
name = "gmail"
domains = ["gmail.test"]
mx = [{ name = "mx1.google.test", address = "{net}.11" }]
[personas.replies]
throttle = "421 4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail \
originating from your IP address. To protect our users from spam, mail sent from your IP \
address has been temporarily rate limited. - gsmtp"
[personas.limits]
messages = "100/m"
sessions = 40
connections = "6000/m"
'''

YAHOO = '''
[[personas]]
name = "yahoo"
domains = ["yahoo.test"]
mx = [{ name = "mx.yahoo.test", address = "{net}.13" }]
[personas.replies]
throttle = "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected \
volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
'''
