"""The FastAPI application factory."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..settings import Settings
from . import errors
from .auth import ApiKeyAuth, load_keys
from .core_client import EngineClient
from .fast_generate import FastGenerate
from .headroom import AgentServer, router as headroom_router
from .middleware import ArrivalAndLimits
from .oip import router as oip_router
from .routes import router
from .shedding import LoadShedding, LoopLag
from .state import FrontendState
from .tracing import TracingMiddleware, setup as setup_tracing


def create_app(settings: Settings, client: EngineClient) -> FastAPI:
    """Build the app over an engine client; it connects (and the models are ready) in the
    lifespan, before readiness."""
    state = FrontendState(settings, client)
    tracing = setup_tracing()  # None unless OTEL_* variables turn it on
    lag = LoopLag()
    agent = AgentServer(state, settings)  # HAProxy's agent check, when --agent-port is set

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await state.start()
        except Exception as e:  # the worker tells its supervisor why it could not start
            state.start_error = f"{type(e).__name__}: {e}"
            raise
        lag.start()
        await agent.start()
        yield
        await agent.stop()
        lag.stop()
        await client.close()
        if tracing:
            tracing.shutdown()

    # FastAPI's own OpenTelemetry spans stay off: TracingMiddleware makes the one span per request
    app = FastAPI(title="Anytime", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Deadline-aware serving of anytime generative models: the server turns each "
                              "request's deadline into a number of tokens, and always answers on time.")
    app.state.frontend = state
    errors.install(app)
    app.include_router(router)
    app.include_router(oip_router)
    app.include_router(headroom_router)
    keys = load_keys(settings.api_keys, settings.api_keys_file)
    open_paths = {p.strip() for p in settings.open_paths.split(",")}
    app.add_middleware(ApiKeyAuth, keys=keys, open_paths=open_paths)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # off by default: a browser page elsewhere cannot call the API unless allowed here
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    # before the body is read or the key checked: shedding must cost less than what it saves
    app.add_middleware(LoadShedding, lag=lag, max_lag_s=settings.shed_lag_ms / 1000, on_shed=state.shed)
    # added last = outermost: every request gets its arrival time and id before anything else
    # a well-formed POST /generate is served from there, past the layers in between (not with
    # CORS configured: its middleware must see every response)
    fast = None if origins else FastGenerate(state, lag, settings.shed_lag_ms / 1000, keys, open_paths)
    app.add_middleware(ArrivalAndLimits, max_body_bytes=settings.max_body_bytes, fast=fast)
    if tracing:  # outermost of all: the span covers everything the request meets here
        app.add_middleware(TracingMiddleware, tracer=tracing.tracer)
    return app
