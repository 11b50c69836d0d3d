"""Open-loop load generator: Poisson arrivals at a fixed rate, each request sent on time
whether or not earlier ones have answered (closed-loop clients would hide overload).

The client shares the machine with the server, so it is built on aiohttp, which needs several
times less CPU per request than httpx: CPU the server would otherwise lose."""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass

import aiohttp
from tqdm import tqdm

from service.capacity.traffic import arrivals, parse_deadlines, parse_mix  # noqa: F401  (bench's own imports)


@dataclass
class Record:
    sent_at: float  # seconds since the start of the run
    deadline_ms: int
    n: int
    status: int  # HTTP status, 0 for a transport error
    client_ms: float  # client-observed latency
    server_ms: float | None = None  # latency_ms the server reported
    compute_ms: float | None = None  # engine time (steps + decodes) the server reported
    engine_ms: float | None = None  # first step to decoded samples, as the server reported
    queue_ms: float | None = None  # arrival to first step, as the server reported
    tokens: int | None = None
    max_tokens: int | None = None
    quality: float | None = None
    deadline_met: bool | None = None  # at the server
    finish_reason: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def anytime_request(body: dict) -> tuple[str, dict, dict]:
    """How a generated body is sent: (path, JSON body, headers). Peer servers pass their own
    translation of the same body (bench/peers/servers.py)."""
    return "/generate", body, {}


def _session(url: str, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=70))


async def run_load(url: str, rate: float, duration: float, deadlines: str = "loguniform:20:1000", n_mix: str = "1",
                   model: str | None = None, seed: int = 0, progress: bool = True, label_count: int = 0,
                   request_for=anytime_request) -> list[Record]:
    plan = []  # the planner simulates the same arrivals (service/capacity/traffic.py)
    for a in arrivals(rate, duration, deadlines, n_mix, seed, label_count):
        body = {"deadline_ms": a.deadline_ms, "n": a.n, "seed": a.seed, "format": "npy"}
        if model:
            body["model"] = model
        if a.label is not None:
            body["label"] = a.label
        plan.append((a.at, body))
    records: list[Record] = []
    bar = tqdm(total=len(plan), desc=f"load {rate:.0f}/s", disable=not progress, leave=False)
    async with _session(url, 4096) as client:
        start = time.perf_counter()

        async def one(at: float, body: dict):
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            rec = Record(sent_at=sent - start, deadline_ms=body["deadline_ms"], n=body["n"], status=0, client_ms=0.0)
            try:
                path, payload, headers = request_for(body)
                async with client.post(path, json=payload, headers=headers) as r:
                    data = await r.read()
                    rec.client_ms = (time.perf_counter() - sent) * 1000
                    rec.status = r.status
                    h = r.headers
                if rec.status == 200 and "x-anytime-tokens" in h:  # peers answer without Anytime's metadata
                    rec.server_ms = float(h["x-anytime-latency-ms"])
                    rec.compute_ms = float(h["x-anytime-compute-ms"])
                    rec.engine_ms = float(h["x-anytime-engine-ms"])
                    rec.queue_ms = float(h["x-anytime-queue-ms"])
                    rec.tokens = int(h["x-anytime-tokens"])
                    rec.max_tokens = int(h["x-anytime-max-tokens"])
                    rec.quality = float(h["x-anytime-quality"])
                    rec.deadline_met = h["x-anytime-deadline-met"] == "true"
                    rec.finish_reason = h.get("x-anytime-finish-reason")
                elif rec.status != 200:
                    rec.error = _error_message(data)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
                rec.client_ms = (time.perf_counter() - sent) * 1000
                rec.error = f"{type(e).__name__}: {e}"[:200]
            records.append(rec)
            bar.update()

        await asyncio.gather(*(one(at, body) for at, body in plan))
    bar.close()
    return sorted(records, key=lambda r: r.sent_at)


def _error_message(data: bytes) -> str:
    """Anytime's {"error": {"message"}}; other servers' bodies as text."""
    try:
        err = json.loads(data)
    except ValueError:
        return data[:200].decode(errors="replace")
    if isinstance(err, dict) and isinstance(err.get("error"), dict):
        return str(err["error"].get("message", ""))[:200]
    return str(err)[:200]


async def run_closed_loop(url: str, concurrency: int, duration: float, n_mix: str = "1", model: str | None = None,
                          deadline_ms: int = 60000, seed: int = 0,
                          request_for=anytime_request) -> list[tuple[float, int]]:
    """`concurrency` clients, each sending its next request as soon as the last is answered,
    for `duration` seconds; returns (seconds since start, samples) of every 200 answer. A
    constant backlog keeps the server saturated at the least client work per answer (an
    open-loop burst would spend the shared CPU on queueing thousands of requests)."""
    rng = random.Random(seed)
    n_values, n_weights = parse_mix(n_mix)
    done: list[tuple[float, int]] = []
    async with _session(url, concurrency) as client:
        start = time.perf_counter()

        async def worker():
            while time.perf_counter() - start < duration:
                n = rng.choices(n_values, n_weights)[0]
                body = {"deadline_ms": deadline_ms, "n": n, "seed": rng.randrange(2**31), "format": "npy"}
                if model:
                    body["model"] = model
                path, payload, headers = request_for(body)
                async with client.post(path, json=payload, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        done.append((time.perf_counter() - start, n))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done
