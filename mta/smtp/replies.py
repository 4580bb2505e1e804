"""The fixed SMTP replies the MTA says, named once (code, RFC 3463 enhanced code, short text).
The server of `mta.smtp.server` speaks for the sink and the simulated ISPs too; a persona's own
texts are its config (`mta.sim.config.RepliesConfig`).

Replies that carry a value (a queue id, a limit, a parameter) are built where they are said;
every reply said word for word in more than one place, or that a test or a client keys on,
lives here.
"""

from __future__ import annotations

from typing import Final

START_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"
SENDER_OK: Final = "250 2.1.0 Sender ok"
RECIPIENT_OK: Final = "250 2.1.5 Recipient ok"

SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, please try again later"
LOCAL_ERROR: Final = "451 4.3.0 Local error in processing; please try again later"
STORAGE_FULL: Final = "452 4.3.1 Insufficient system storage"
STORAGE_TOO_SMALL: Final = "452 4.3.1 Insufficient system storage for a message of that size"

NEED_MAIL: Final = "503 5.5.1 Error: need MAIL command"
NESTED_MAIL: Final = "503 5.5.1 Error: nested MAIL command"
TOO_BIG: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
RELAY_DENIED: Final = "554 5.7.1 Relay access denied"
