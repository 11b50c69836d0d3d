"""Progressive streaming over SSE on the real server."""
import json
import time

import httpx
import pytest

from tests.utils.server import running_server
from tests.utils.faults import set_step_hook


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    # previews as often as asked (the default 50 ms interval is tested below)
    with running_server(model_dirs=str(tiny_model_dir), backend="onnx", max_batch=32, preview_interval_ms=0) as s:
        yield s


def read_events(response) -> list[tuple[str, dict]]:
    events, event, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and event:
            events.append((event, json.loads("\n".join(data))))
            event, data = None, []
    return events


def stream(base, **body):
    with httpx.stream("POST", base + "/generate", json={"stream": True, **body}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return read_events(r)


def test_previews_then_final_in_order_and_prefix_consistent(server):
    base, _ = server
    events = stream(base, deadline_ms=5000, seed=3, n=2, preview_every=2)
    kinds = [e for e, _ in events]
    assert kinds == ["preview", "preview", "preview", "final"]  # at 2, 4, 6 tokens, then 8
    previews = [d for e, d in events if e == "preview"]
    assert [p["tokens"] for p in previews] == [2, 4, 6]
    assert [p["quality"] for p in previews] == sorted(p["quality"] for p in previews)
    final = events[-1][1]
    assert final["tokens"] == 8 and final["deadline_met"] and len(final["samples"]) == 2
    # each preview is exactly the sample the same seed gives when stopped at that k
    for p in previews:
        truncated = httpx.post(base + "/generate", json={"deadline_ms": 5000, "seed": 3, "n": 2,
                                                         "max_tokens": p["tokens"]}).json()
        assert p["samples"] == truncated["samples"]
    full = httpx.post(base + "/generate", json={"deadline_ms": 5000, "seed": 3, "n": 2}).json()
    assert final["samples"] == full["samples"]


def test_default_preview_interval_and_deadline_held_with_slow_steps(server):
    base, state = server
    set_step_hook(state.engines["tiny"], lambda B: time.sleep(0.03))
    try:
        events = stream(base, deadline_ms=150, seed=4)
    finally:
        set_step_hook(state.engines["tiny"], None)
    final = events[-1][1]
    assert events[-1][0] == "final" and final["deadline_met"] and final["latency_ms"] <= 150
    assert final["tokens"] < 8 and final["finish_reason"] == "deadline_guard"
    assert all(d["tokens"] < final["tokens"] for e, d in events[:-1])


def test_stream_admission_errors_are_plain_json(server):
    base, _ = server
    r = httpx.post(base + "/generate", json={"deadline_ms": 1, "stream": True})
    assert r.status_code == 503 and r.json()["error"]["code"] == 503
    r = httpx.post(base + "/generate", json={"deadline_ms": 100, "stream": True, "format": "npy"})
    assert r.status_code == 422 and "stream" in r.json()["error"]["message"]


def test_disconnect_mid_stream_frees_the_sequences(server):
    base, state = server
    engine = state.engines["tiny"]
    set_step_hook(engine, lambda B: time.sleep(0.05))
    try:
        with httpx.stream("POST", base + "/generate", json={"deadline_ms": 10000, "n": 3, "stream": True,
                                                             "preview_every": 1}, timeout=10) as r:
            for line in r.iter_lines():
                if line.startswith("event: preview"):
                    break  # leave after the first preview
        end = time.monotonic() + 3
        while engine.active_sequences and time.monotonic() < end:
            time.sleep(0.01)
        assert engine.active_sequences == 0 and engine.queued_sequences == 0
    finally:
        set_step_hook(engine, None)


def test_previews_keep_their_minimum_interval_and_the_final_always_comes(tiny_model_dir):
    # best-effort previews are the default (policy anytime)
    with running_server(model_dirs=str(tiny_model_dir), backend="onnx", max_batch=32,
                        preview_interval_ms=50) as (base, core):
        set_step_hook(core.engines["tiny"], lambda B: time.sleep(0.015))
        events = stream(base, deadline_ms=5000, seed=5, preview_every=1)
        skipped = core.metrics.previews_skipped.labels("tiny")._value.get()
    previews = [d for e, d in events if e == "preview"]
    assert events[-1][0] == "final" and events[-1][1]["tokens"] == 8
    # 8 steps of >= 15 ms: a preview per token would be 7; at least 50 ms apart leaves at most 3
    assert 1 <= len(previews) <= 3
    gaps = [b["elapsed_ms"] - a["elapsed_ms"] for a, b in zip(previews, previews[1:])]
    assert all(g >= 40 for g in gaps), gaps
    assert skipped >= 7 - len(previews) - 1
