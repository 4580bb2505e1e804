"""The spool's SQLite schema and its version (one file: messages, recipients, attempts, events,
site events, bindings and the webhook cursors).

Each message's content carries its checksum (`content_sha256`, hex SHA-256 of the stored
bytes, checked before every delivery) and `damaged` (the check failed: the message is
held, never sent); an older spool gets both columns in place (`ADDED_COLUMNS`) and a
checksum for each content it already holds.
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    mail_from TEXT NOT NULL,
    delivery_id TEXT,
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    size INTEGER NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL,
    content_sha256 TEXT,
    damaged INTEGER NOT NULL DEFAULT 0,
    content BLOB
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    log_id TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    expires_at REAL NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    last_code INTEGER,
    last_enhanced TEXT,
    last_text TEXT,
    last_phase TEXT,
    last_mx TEXT,
    updated_at REAL,
    reported_key TEXT,
    reported_at REAL
);
CREATE INDEX IF NOT EXISTS recipients_domain_due ON recipients(domain, next_attempt_at)
    WHERE state = 'queued' AND leased = 0;
CREATE INDEX IF NOT EXISTS recipients_expiry ON recipients(expires_at)
    WHERE state = 'queued' AND leased = 0;
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL,
    at REAL NOT NULL,
    code INTEGER,
    enhanced TEXT,
    text TEXT,
    phase TEXT,
    mx TEXT,
    result TEXT NOT NULL,
    site TEXT,
    binding TEXT
);
CREATE INDEX IF NOT EXISTS attempts_recipient ON attempts(recipient_id);
CREATE TABLE IF NOT EXISTS site_events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    site TEXT NOT NULL,
    binding TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    name TEXT PRIMARY KEY,
    first_day INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    recipient_id INTEGER,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (
    url TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    failing_since REAL,
    delivered INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0
);
"""
SCHEMA_VERSION = 3
# Versions this one opens in place: version 2 lacked only webhook_cursors (feedback created it
# itself), which the CREATE ... IF NOT EXISTS above adds.
UPGRADABLE = frozenset({2})

# Columns added since a version's tables were made, and how to add them to an older file:
# (table, column, type). Additive: older code ignores them, so the version stays.
ADDED_COLUMNS = (
    ("recipients", "reported_key", "TEXT"),  # the last soft bounce reported (mta.core.coalesce)
    ("recipients", "reported_at", "REAL"),
    ("messages", "content_sha256", "TEXT"),  # checked before delivery (mta.queue.queries)
    ("messages", "damaged", "INTEGER NOT NULL DEFAULT 0"),
)
