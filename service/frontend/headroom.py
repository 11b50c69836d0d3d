"""The headroom signal for load balancers (docs/scaling-out.md): GET /headroom, and HAProxy's
agent check on `--agent-port`.

The engine core computes each model's headroom with the scheduler's own admission code
(service/core/headroom.py); a frontend asks for it on demand (one round trip over the IPC
socket, shared by concurrent askers). A replica's weight is the default model's headroom in
percent: requests that name no model go there.

HAProxy's agent check (`agent-check agent-port N`) opens a TCP connection, reads one line and
closes it. The line here is `ready 42%` (set the weight to 42% of the configured weight and
leave any drain state) or `drain` (no new traffic; requests in flight complete) while this
replica does not admit requests: draining on SIGTERM, the engine core gone, models loading.
The weight never drops below 1% while ready: a replica with no headroom for the reference
request may still serve longer deadlines, and its fast 503 costs the balancer one retry."""
from __future__ import annotations

import asyncio
import logging
import socket

from fastapi import APIRouter, Request

from ..settings import Settings
from .errors import ApiError
from .state import FrontendState

log = logging.getLogger("anytime.frontend")
router = APIRouter()
ASK_TIMEOUT_S = 1.0  # an agent check waits this long for the engine core, then says drain


async def replica_headroom(state: FrontendState) -> tuple[str | None, dict[str, float]]:
    """(why this replica admits nothing, or None; each model's headroom)."""
    reason = state.unavailable()
    if reason:
        return reason, {}
    try:
        models = await asyncio.wait_for(state.client.headroom(), ASK_TIMEOUT_S)
    except (ConnectionError, TimeoutError, asyncio.TimeoutError):
        return "the engine core did not answer", {}
    return state.unavailable(), models


def weight_percent(state: FrontendState, models: dict[str, float]) -> int:
    """The load balancer's weight: the default model's headroom in percent, at least 1."""
    return max(1, min(100, round(100 * models.get(state.client.default_model, 0.0))))


def agent_line(reason: str | None, weight: int) -> bytes:
    return b"drain\n" if reason else b"ready %d%%\n" % weight


@router.get("/headroom")
async def headroom(request: Request):
    """The quality this replica could give a reference request now (n=1, deadline
    `headroom_deadline_ms`): the tokens its scheduler would plan, as a fraction of D, per model;
    `weight` is what the agent check reports. 503 while it admits nothing."""
    state: FrontendState = request.app.state.frontend
    reason, models = await replica_headroom(state)
    if reason:
        raise ApiError(503, reason, {"Retry-After": "1"})
    return {"models": models, "default_model": state.client.default_model, "weight": weight_percent(state, models),
            "reference": {"n": 1, "deadline_ms": state.settings.headroom_deadline_ms}}


class AgentServer:
    """HAProxy's agent-check protocol on its own TCP port: one line per connection. Every
    frontend worker binds the port with SO_REUSEPORT (the kernel spreads the checks); any of
    them answers for the replica."""

    def __init__(self, state: FrontendState, settings: Settings):
        self.state, self.settings = state, settings
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        if not self.settings.agent_port:
            return
        reuse_port = hasattr(socket, "SO_REUSEPORT")
        self.server = await asyncio.start_server(self._answer, self.settings.host, self.settings.agent_port,
                                                 reuse_address=True, reuse_port=reuse_port)
        log.info("agent check listening", extra={"port": self.settings.agent_port})

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reason, models = await replica_headroom(self.state)
            writer.write(agent_line(reason, weight_percent(self.state, models)))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the checker went away first
        finally:
            writer.close()
