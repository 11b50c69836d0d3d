"""The benchmark harness against a real server on loopback: open-loop arrivals, the
closed-loop capacity measurement and the summary they feed."""
import asyncio

import pytest

from bench.load_bench import measure_capacity
from bench.loadgen import parse_deadlines, parse_mix, run_load
from bench.summary import summarize
from tests.utils.server import running_server


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir)) as (url, _state):
        yield url


def test_open_loop_load_records_every_request(base):
    records = asyncio.run(run_load(base, rate=60, duration=1.0, deadlines="choice:5,200,1000", n_mix="1:0.5,2:0.5",
                                   progress=False))
    assert 30 <= len(records) <= 100  # Poisson arrivals at 60/s for 1 s
    assert all(r.status in (200, 503) for r in records)
    ok = [r for r in records if r.status == 200]
    assert ok and all(r.tokens >= 1 and r.server_ms is not None and r.compute_ms <= r.server_ms for r in ok)
    s = summarize(records, 1.0)
    assert s["requests"] == len(records) and s["admitted"] == len(ok)


def test_capacity_is_measured_from_a_saturated_closed_loop(base):
    capacity = asyncio.run(measure_capacity(base, n_mix="1:0.5,4:0.5", seconds=3.0, rows=16))
    assert capacity > 10  # samples/s of a D=8 model; generous, the value depends on the machine


def test_distribution_parsers():
    import random

    rng = random.Random(0)
    draws = [parse_deadlines("loguniform:20:1000")(rng) for _ in range(500)]
    assert 20 <= min(draws) and max(draws) <= 1000 and sorted(draws)[250] < 510  # log-uniform median ~141
    assert parse_mix("1:0.8,4:0.2") == ([1, 4], [0.8, 0.2])
    with pytest.raises(ValueError):
        parse_deadlines("gaussian:1:2")
