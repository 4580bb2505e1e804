"""Reading the mail that reaches the sender's bounce mailbox (pure).

    inbound = parse_inbound(raw_bytes)         # -> Inbound: kind, original, one Notice each
    results = qualify(inbound, load_rules())   # -> [Qualified]: type, reason, code, rule

Modules, one job each: `model` (the data), `mime` (reading the MIME structure and text),
`fields` (RFC 3464 / 5965 report fields, read leniently), `shapes` (failed recipients in the
text of non-standard bounces: Exim, qmail, Gmail, Exchange, Domino, Yahoo, ...), `evidence`
(bounce, auto-reply or complaint, by evidence, the bounce test first), `reader` (puts them
together: `parse_inbound`), `rules` (the inbound-email rules: `load_rules`, `qualify`).
"""

from campaign_client.bounces.model import (
    FAILURE_TYPES,
    KINDS,
    REASON_CODES,
    Inbound,
    Notice,
    Original,
    Qualified,
)
from campaign_client.bounces.reader import parse_inbound
from campaign_client.bounces.rules import (
    CONDITIONS,
    DEFAULT_RULES_RESOURCE,
    Rule,
    RulesError,
    load_rules,
    parse_rules,
    qualify,
    smtp_of,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_RULES_RESOURCE",
    "FAILURE_TYPES",
    "KINDS",
    "REASON_CODES",
    "Inbound",
    "Notice",
    "Original",
    "Qualified",
    "Rule",
    "RulesError",
    "load_rules",
    "parse_inbound",
    "parse_rules",
    "qualify",
    "smtp_of",
]
