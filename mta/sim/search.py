"""The inbox's search language (pure): a query string -> terms, and a term -> a summary match.

    to:alice@gmail.test from:news subject:"spring sale" delivery:DLV-42 persona:gmail dkim:pass

Like Mailpit's: `field:value` terms (a value with spaces in double quotes), and bare words
that match the subject, the senders and the recipients. Every term must match (AND).
`to`, `from`, `subject` and bare words match a part, ignoring case; `delivery`, `persona`
and `dkim` match the whole value. An unknown `name:` is a bare word.
"""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("to", "from", "subject", "delivery", "persona", "dkim")
EXACT = frozenset({"delivery", "persona", "dkim"})
MAX_TERMS = 16
MAX_VALUE = 256


@dataclass(frozen=True)
class Term:
    field: str  # one of FIELDS, or "text" for a bare word
    value: str


def _tokens(query: str) -> list[str]:
    """Split on spaces outside double quotes; quotes are removed."""
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    for char in query:
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


def parse(query: str) -> list[Term]:
    """The terms of `query` (at most MAX_TERMS, each value at most MAX_VALUE characters)."""
    terms: list[Term] = []
    for token in _tokens(query)[:MAX_TERMS]:
        name, colon, value = token.partition(":")
        field = name.lower()
        if colon and field in FIELDS and value:
            terms.append(Term(field, value[:MAX_VALUE]))
        elif token:
            terms.append(Term("text", token[:MAX_VALUE]))
    return terms


def matches(term: Term, fields: dict[str, list[str]]) -> bool:
    """Whether one term matches a message's `fields` (field -> its values, "text" included)."""
    values = fields.get(term.field, [])
    if term.field in EXACT:
        return any(value.lower() == term.value.lower() for value in values)
    wanted = term.value.lower()
    return any(wanted in value.lower() for value in values)
