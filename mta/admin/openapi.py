"""The admin API as an OpenAPI 3.1 document: every endpoint's parameters, request and response
schemas, and the feedback webhook's payload (`webhooks`). Served at /api/v1/openapi.json;
a test validates it with openapi-spec-validator and runs schemathesis against the live API."""

from __future__ import annotations

from typing import Any

NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required is not None:
        schema["required"] = required
    return schema


def _json(schema: dict[str, Any], text: str = "OK") -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _text(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"text/plain": {"schema": STR}}}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


ERROR = _json(_ref("Error"), "the request is refused; `error` says why")
WRITE_ERRORS = {
    "400": ERROR,
    "401": _json(_ref("Error"), "no token, or the wrong one"),
    "403": _json(_ref("Error"), "writes are disabled: no token is configured"),
}

EVENT = _obj(
    {
        "event_id": STR,
        "seq": INT,
        "kind": {
            "type": "string",
            "enum": [
                "relayed", "delivered", "soft_bounce", "hard_bounce", "expired",
                "out_of_band", "complaint",
            ],
        },
        "at": NUM,
        "queue_id": STR,
        "delivery_id": _nullable(STR),
        "log_id": _nullable(STR),
        "recipient": STR,
        "attempt": INT,
        "smtp": _nullable(
            _obj(
                {
                    "code": _nullable(INT),
                    "enhanced": _nullable(STR),
                    "text": STR,
                    "phase": STR,
                    "mx": _nullable(STR),
                },
                ["code", "enhanced", "text", "phase", "mx"],
            )
        ),
        "bounce_class": _nullable(_obj({"code": INT, "name": STR}, ["code", "name"])),
        "failure": _nullable(
            _obj(
                {"type": STR, "reason": STR, "reason_code": _nullable(INT)},
                ["type", "reason", "reason_code"],
            )
        ),
        "next_attempt_at": _nullable(NUM),
        "possible_duplicate": BOOL,
    },
    ["event_id", "seq", "kind", "at", "queue_id", "recipient", "attempt", "possible_duplicate"],
)

SITE = _obj(
    {
        "site": STR,
        "binding": STR,
        "rule": STR,
        "state": {"type": "string", "enum": ["ok", "slowed", "suspended", "down"]},
        "rate": _nullable(NUM),
        "configured_rate": _nullable(NUM),
        "concurrency": INT,
        "max_connections": INT,
        "until": _nullable(NUM),
        "last_change_at": _nullable(NUM),
        "last_reason": STR,
        "delivered": INT,
        "deferred": INT,
        "throttled": INT,
        "bounced": INT,
        "effective_rate": NUM,
        "average_rate": _nullable(NUM),
        "hosts": {"type": "array", "items": STR},
        "domains": {"type": "array", "items": STR},
        "queued": INT,
        "in_flight": INT,
        "changes": {"type": "array", "items": {"type": "object"}},
    },
    ["site", "binding", "state", "queued", "in_flight", "delivered", "changes"],
)

ATTEMPT = _obj(
    {
        "recipient_id": INT,
        "address": STR,
        "state": STR,
        "attempts": INT,
        "next_attempt_at": _nullable(NUM),
        "at": _nullable(NUM),
        "code": _nullable(INT),
        "enhanced": _nullable(STR),
        "text": _nullable(STR),
        "phase": _nullable(STR),
        "mx": _nullable(STR),
        "result": _nullable(STR),
    },
    ["recipient_id", "address", "state", "attempts"],
)

ACTION_BODY = _obj(
    {
        "target": {"type": "string", "description": "a domain, or a site as /queue/sites names it"},
        "queue_id": {"type": "string", "description": "bounce only: this message's recipients"},
        "duration": {"type": "string", "description": "suspend only: e.g. 90s, 10m, 2h (<= 7d)"},
        "reason": {"type": "string", "maxLength": 200},
    }
)

AUDIT = _obj(
    {
        "action": {"type": "string", "enum": ["suspend", "resume", "bounce", "retry"]},
        "target": STR,
        "reason": STR,
        "who": STR,
        "at": NUM,
        "duration": NUM,
        "until": NUM,
        "sites": {"type": "array", "items": STR},
        "recipients": INT,
    },
    ["action", "target", "reason", "who", "at"],
)

VERDICT = _obj(
    {
        "reply": _obj({"code": INT, "enhanced": _nullable(STR), "text": STR}),
        "phase": STR,
        "condition": _nullable(STR),
        "bounce_class": _obj({"code": INT, "name": STR}),
        "failure_type": STR,
        "failure_reason": STR,
        "failure_reason_code": INT,
        "scope": STR,
        "permanent": BOOL,
        "rule": STR,
    },
    ["reply", "bounce_class", "failure_type", "failure_reason"],
)


def _action(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"token": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ACTION_BODY}},
            },
            "responses": {
                "200": _json(_obj({**AUDIT["properties"], "message": STR}, ["message"])),
                "404": _json(_ref("Error"), "no site known for the target"),
                **WRITE_ERRORS,
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mta-sim admin API",
        "version": "1",
        "description": "Health, metrics, feedback events, classification, queue and sites, "
        "operator actions (token), and the operator console's feeds.",
    },
    "components": {
        "schemas": {"Error": _obj({"error": STR}, ["error"]), "Event": EVENT},
        "securitySchemes": {
            "token": {
                "type": "http",
                "scheme": "bearer",
                "description": "admin.token / MTA_ADMIN_TOKEN",
            }
        },
    },
    "paths": {
        "/livez": {"get": {"summary": "Liveness", "responses": {"200": _text("ok")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 until mail can be accepted and stored",
                "responses": {"200": _text("ready"), "503": _text("not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {"200": _text("every family with HELP and TYPE")},
            }
        },
        "/api/v1/status": {
            "get": {
                "summary": "Counts by recipient state",
                "responses": {
                    "200": _json(
                        _obj(
                            {k: INT for k in (
                                "queued", "in_flight", "delivered", "bounced", "expired",
                                "accepted", "rejected",
                            )},
                            ["queued", "delivered"],
                        )
                    )
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "Feedback events after a cursor (long-poll)",
                "parameters": [
                    _query("after", {"type": "integer", "minimum": 0}, "the `next` of before"),
                    _query("limit", {"type": "integer", "minimum": 1}, "at most (<= 1000)"),
                    _query("wait", {"type": "number", "minimum": 0, "maximum": 60}, "seconds"),
                ],
                "responses": {
                    "200": _json(
                        _obj({"events": {"type": "array", "items": _ref("Event")}, "next": INT},
                             ["events", "next"])
                    ),
                    "400": ERROR,
                },
            }
        },
        "/api/v1/classify": {
            "post": {
                "summary": "Qualify an SMTP reply",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _obj(
                                {"reply": STR, "phase": STR, "condition": STR}, ["reply"]
                            )
                        }
                    },
                },
                "responses": {"200": _json(VERDICT), "400": ERROR, "501": ERROR},
            }
        },
        "/api/v1/messages/{queue_id}": {
            "get": {
                "summary": "One message's recipients with every attempt",
                "parameters": [
                    {"name": "queue_id", "in": "path", "required": True, "schema": STR}
                ],
                "responses": {
                    "200": _json(
                        _obj({"queue_id": STR, "attempts": {"type": "array", "items": ATTEMPT}},
                             ["queue_id", "attempts"])
                    ),
                    "404": ERROR,
                },
            }
        },
        "/api/v1/webhooks": {
            "get": {
                "summary": "Webhook endpoints and their cursors",
                "responses": {
                    "200": _json(
                        _obj({"webhooks": {"type": "array", "items": {"type": "object"}}},
                             ["webhooks"])
                    )
                },
            }
        },
        "/api/v1/queue/sites": {
            "get": {
                "summary": "Per site and binding: queue, limits, state, changes",
                "responses": {
                    "200": _json(_obj({"sites": {"type": "array", "items": SITE}}, ["sites"]))
                },
            }
        },
        "/api/v1/control/suspend": _action("Suspend a site (by key or a domain it serves)"),
        "/api/v1/control/resume": _action("End a site's suspension now"),
        "/api/v1/control/bounce": _action(
            "Hard-bounce the queued recipients of a domain or message (reason in the events)"
        ),
        "/api/v1/control/retry": _action("Make a domain's queued recipients due now"),
        "/api/v1/audit": {
            "get": {
                "summary": "Operator actions recorded in the spool, newest first",
                "parameters": [
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most")
                ],
                "responses": {
                    "200": _json(_obj({"actions": {"type": "array", "items": AUDIT}},
                                      ["actions"])),
                    "400": ERROR,
                },
            }
        },
        "/api/v1/console": {
            "get": {
                "summary": "Links for the console page",
                "responses": {"200": _json(_obj({"inbox_url": STR, "campaign": BOOL}))},
            }
        },
        "/api/v1/campaign": {
            "get": {
                "summary": "The Campaign client's deliveries and lines (when one runs)",
                "responses": {
                    "200": _json(
                        _obj(
                            {
                                "available": BOOL,
                                "reason": STR,
                                "deliveries": {"type": "array", "items": {"type": "object"}},
                                "lines": {"type": "array", "items": {"type": "object"}},
                            },
                            ["available"],
                        )
                    )
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
        },
    },
    "webhooks": {
        "feedback": {
            "post": {
                "summary": "Feedback events, batched, signed (Standard Webhooks), at least once",
                "parameters": [
                    {"name": name, "in": "header", "required": True, "schema": STR}
                    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": _ref("Event")}
                        }
                    },
                },
                "responses": {
                    "200": {"description": "accepted (any 2xx); anything else is retried"}
                },
            }
        }
    },
}
