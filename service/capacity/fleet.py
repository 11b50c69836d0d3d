"""A fleet of identical replicas behind a load balancer, and the replicas a traffic needs.

The balancer is modelled as round robin (HAProxy's `balance roundrobin`; the shipped config
weights it by headroom, which between equally loaded replicas is equal weights): replica i gets
arrivals i, i+R, i+2R, ... of the fleet's Poisson stream. All replicas are then alike, so one
of them is simulated and stands for the others (`random` instead splits the stream at random:
each replica sees a Poisson stream of rate/R, a little burstier). Headroom weighting's gain
when replicas are unequally loaded (bench/results/fleet) is not modelled.

"Needed" is the fewest replicas at which the delivered quality, the mean over all requests of
q(k) for an answer on time and 0 for a refusal or a late answer, reaches the floor."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .calibration import Calibration
from .replica import Outcome, SimulatedReplica
from .traffic import arrivals, mean_n

LB_MODELS = ("round-robin", "random")


@dataclass(frozen=True)
class Traffic:
    rate: float  # requests/s to the whole fleet
    deadlines: str  # service/capacity/traffic.parse_deadlines
    n_mix: str  # service/capacity/traffic.parse_mix


@dataclass
class Point:
    """One replica count, as the simulated replica saw it."""

    replicas: int
    rate_per_replica: float
    requests: int
    on_time: float  # share of all requests answered by their deadline
    refused: float  # share refused at admission (503)
    late: float  # share answered after their deadline
    mean_tokens: float  # per answered request
    mean_quality: float  # per answered request
    delivered_quality: float  # per request: q(k) on time, else 0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(replicas: int, rate: float, outcomes: list[Outcome]) -> Point:
    total = max(1, len(outcomes))
    answered = [o for o in outcomes if not o.refused]
    on_time = [o for o in answered if o.on_time]
    return Point(replicas, rate, len(outcomes), len(on_time) / total, (len(outcomes) - len(answered)) / total,
                 (len(answered) - len(on_time)) / total,
                 sum(o.tokens for o in answered) / max(1, len(answered)),
                 sum(o.quality for o in answered) / max(1, len(answered)),
                 sum(o.quality for o in on_time) / total)


def replica_arrivals(traffic: Traffic, replicas: int, duration: float, seed: int, lb: str):
    """The arrivals one replica of `replicas` gets."""
    if lb == "random":
        return arrivals(traffic.rate / replicas, duration, traffic.deadlines, traffic.n_mix, seed)
    if lb != "round-robin":
        raise ValueError(f"unknown load balancer model {lb!r}; choose {', '.join(LB_MODELS)}")
    return arrivals(traffic.rate, duration, traffic.deadlines, traffic.n_mix, seed)[::replicas]


def simulate(cal: Calibration, traffic: Traffic, replicas: int, duration: float = 20.0, seed: int = 0,
             lb: str = "round-robin", jitter: float | None = None) -> Point:
    outcomes = SimulatedReplica(cal, jitter=jitter, seed=seed).run(replica_arrivals(traffic, replicas, duration, seed, lb))
    return summarize(replicas, traffic.rate / replicas, outcomes)


def full_length_capacity(cal: Calibration) -> float:
    """Samples/s one replica generates at k = D with every row busy (the search's first guess)."""
    sim = SimulatedReplica(cal)
    B = sim.config.max_batch
    return B / (cal.D * sim.truth.step.profiled(B) + sim.truth.decode.profiled(B))


@dataclass
class Plan:
    traffic: Traffic
    floor: float
    points: list[Point]  # every replica count simulated, by count
    needed: int | None  # None: the floor is out of reach at any count (see ceiling)
    ceiling: Point  # a nearly idle fleet: the best this traffic can get from these replicas
    capacity: float  # full-length samples/s of one replica

    def to_dict(self) -> dict:
        return {"traffic": asdict(self.traffic), "quality_floor": self.floor, "replicas_needed": self.needed,
                "ceiling": self.ceiling.to_dict(), "full_length_capacity": self.capacity,
                "points": [p.to_dict() for p in self.points]}


def plan(cal: Calibration, traffic: Traffic, floor: float, duration: float = 20.0, seed: int = 0,
         lb: str = "round-robin", jitter: float | None = None, counts: list[int] | None = None) -> Plan:
    """Simulate replica counts and find the fewest that deliver `floor` (delivered quality
    falls as load per replica rises, so a bisection finds it); `counts`: also simulate these."""
    cache: dict[int, Point] = {}

    def at(r: int) -> Point:
        if r not in cache:
            cache[r] = simulate(cal, traffic, r, duration, seed, lb, jitter)
        return cache[r]

    capacity = full_length_capacity(cal)
    guess = max(1, math.ceil(traffic.rate * mean_n(traffic.n_mix) / capacity))
    # a fleet at 2% of its capacity: requests meet an idle replica (about 50 arrivals at least)
    idle = max(guess * 50, 1)
    ceiling = simulate(cal, traffic, idle, max(duration, 50 * idle / traffic.rate), seed, lb, jitter)
    needed = None
    if ceiling.delivered_quality >= floor:
        lo, hi = 0, guess  # lo fails (or is 0), hi: to be found
        while at(hi).delivered_quality < floor:
            lo, hi = hi, hi * 2
            if hi >= idle:
                hi = idle
                break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at(mid).delivered_quality >= floor else (mid, hi)
        needed = hi if at(hi).delivered_quality >= floor else None
    centre = needed or guess
    grid = {max(1, round(centre * f)) for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)}
    grid |= {max(1, centre + d) for d in (-1, 1, 2)}  # small fleets: the neighbours of the answer
    for r in sorted(grid | set(counts or ())):
        at(r)
    return Plan(traffic, floor, [cache[r] for r in sorted(cache)], needed, ceiling, capacity)
