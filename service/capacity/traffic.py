"""The traffic a replica fleet serves: Poisson arrivals at a rate, deadlines from a distribution,
samples per request from a mix. The load generator (bench/loadgen.py) sends the very arrivals
`arrivals()` lists for the same seed, so a simulated run and a measured one see the same requests."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass


def parse_deadlines(spec: str):
    """'loguniform:20:1000' | 'uniform:20:1000' | 'fixed:100' | 'choice:20,50,100' -> sampler(rng)
    of deadlines in whole milliseconds. ValueError for anything else."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "fixed":
            v = int(rest)
            _check_ms([v], spec)
            return lambda rng: v
        if kind == "choice":
            vals = [int(x) for x in rest.split(",")]
            _check_ms(vals, spec)
            return lambda rng: rng.choice(vals)
        lo, hi = (float(x) for x in rest.split(":"))
    except ValueError:
        raise ValueError(f"malformed deadline distribution {spec!r}") from None
    _check_ms([lo, hi], spec)
    if lo > hi:
        raise ValueError(f"deadline distribution {spec!r}: low above high")
    if kind == "uniform":
        return lambda rng: int(round(rng.uniform(lo, hi)))
    if kind == "loguniform":
        return lambda rng: int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    raise ValueError(f"unknown deadline distribution {spec!r}: loguniform:LO:HI, uniform:LO:HI, fixed:MS or "
                     f"choice:MS,MS,...")


def _check_ms(values, spec: str) -> None:
    if not values or any(not 1 <= v <= 60000 for v in values):  # the API's range of deadline_ms
        raise ValueError(f"deadline distribution {spec!r}: deadlines must be 1-60000 ms")


def parse_mix(spec: str) -> tuple[list[int], list[float]]:
    """'1:0.8,4:0.15,16:0.05' -> values and weights of n (a missing weight is 1)."""
    values, weights = [], []
    try:
        for part in spec.split(","):
            v, _, w = part.partition(":")
            values.append(int(v))
            weights.append(float(w or 1))
    except ValueError:
        raise ValueError(f"malformed n mix {spec!r}: N:WEIGHT,N:WEIGHT,...") from None
    if any(not 1 <= v <= 64 for v in values) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"n mix {spec!r}: n must be 1-64 and weights non-negative, not all 0")
    return values, weights


def mean_n(spec: str) -> float:
    values, weights = parse_mix(spec)
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds since the start
    deadline_ms: int
    n: int
    seed: int
    label: int | None = None


def arrivals(rate: float, duration: float, deadlines: str, n_mix: str, seed: int = 0,
             label_count: int = 0) -> list[Arrival]:
    """Poisson arrivals at `rate` per second for `duration` seconds, in order. The random draws
    (gap, deadline, n, seed, label) are the load generator's, in its order."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    rng = random.Random(seed)
    pick_deadline = parse_deadlines(deadlines)
    n_values, n_weights = parse_mix(n_mix)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        deadline, n, s = pick_deadline(rng), rng.choices(n_values, n_weights)[0], rng.randrange(2**31)
        label = rng.randrange(label_count) if label_count and rng.random() < 0.5 else None
        out.append(Arrival(t, deadline, n, s, label))
