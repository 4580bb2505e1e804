"""Chaos over HTTP: read and change the personas at run time (`mta.sim.chaos`).

    GET /sim/v1/chaos              {"personas": {name: state}, "log": [recent changes]}
    PUT /sim/v1/chaos/{persona}    an update (see `mta.sim.chaos`), with the write token;
                                   answers the persona's new state

Every change is logged (who, when, what) and kept in the recent-changes list.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from mta.sim import chaos
from mta.sim.inbox_http import refusal
from mta.sim.persona import Persona

log = logging.getLogger("mta.sim.chaos")
KEPT = 100


def add_routes(app: web.Application, personas: Mapping[str, Persona], token: str) -> None:
    changes: deque[dict[str, Any]] = deque(maxlen=KEPT)

    async def show(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "personas": {name: p.chaos_state() for name, p in personas.items()},
                "log": list(reversed(changes)),
            }
        )

    async def change(request: web.Request) -> web.Response:
        denied = refusal(request, token)
        if denied is not None:
            return denied
        name = request.match_info["persona"]
        persona = personas.get(name)
        if persona is None:
            known = ", ".join(personas)
            return web.json_response(
                {"error": f"no persona {name!r} (known: {known})"}, status=404
            )
        try:
            data = await request.json()
            update = chaos.parse(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "the body must be JSON"}, status=400)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        state = persona.apply_chaos(update)
        entry = {"at": time.time(), "persona": name, "who": request.remote, "change": data}
        changes.append(entry)
        log.warning("chaos on %s by %s: %s", name, request.remote, json.dumps(data))
        return web.json_response({"persona": name, "state": state})

    app.router.add_get("/sim/v1/chaos", show)
    app.router.add_put("/sim/v1/chaos/{persona}", change)
