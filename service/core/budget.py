"""The budget arithmetic: how many tokens fit before a deadline at a batch size and a wait, and
where the quality curve says to stop under pressure. Pure functions of the configuration, the
latency model and their arguments: nothing here writes request or scheduler state, so the
admitting thread and the engine thread both call it."""
from __future__ import annotations

import bisect
import math

import numpy as np

from .latency import LatencyModel
from .request import Request

PRIORITY_PRICE = {"high": 0.5, "normal": 1.0, "low": 2.0}  # multiplies the quality price under load


def future_gain_rate(quality: np.ndarray) -> np.ndarray:
    """g[k] = best average quality gain per further token from k: max_j (q[j]-q[k])/(j-k)."""
    D = len(quality) - 1
    g = np.zeros(D + 1)
    for k in range(D):
        g[k] = np.max((quality[k + 1:] - quality[k]) / np.arange(1, D - k + 1))
    return g


class Budget:
    def __init__(self, config, latency: LatencyModel, D: int, quality: np.ndarray):
        self.config, self.latency, self.D, self.quality = config, latency, D, quality
        self.gain = future_gain_rate(quality)
        # quality_cap(price) = first k with gain[k] < price = first k whose running minimum of
        # gain is below price; that running minimum falls, so its negation can be bisected
        self._neg_min_gain = (-np.minimum.accumulate(self.gain)).tolist()

    def respond_margin(self) -> float:
        """Time kept after the decode: the configured floor, or the slowest recent response."""
        return max(self.config.respond_margin_s, self.latency.respond())

    def margin(self) -> float:
        """Time a deadline decision keeps free besides predicted costs: responding, and the
        worst recent overrun of a predicted step, decode or row copy."""
        return self.respond_margin() + self.latency.jitter()

    def token_price(self, pressure: float, priority: str = "normal") -> float:
        """What a row's step costs under pressure, in quality: what it could buy elsewhere (a
        high-priority request pays half the price, a low-priority one twice)."""
        return self.config.quality_price * PRIORITY_PRICE[priority] * pressure / self.D

    def quality_cap(self, pressure: float, priority: str = "normal") -> int:
        """Under pressure, the k after which further tokens buy less quality than a step costs."""
        price = self.token_price(pressure, priority)
        if price <= 0:
            return self.D
        return min(self.D, bisect.bisect_right(self._neg_min_gain, -price))

    def full_step(self) -> float:
        """What one step costs, with its safety factor, when every row is busy."""
        return self.config.safety * self.latency.step.paced(self.config.max_batch)

    def preview_cost_per_step(self, r: Request, step: float) -> float:
        """A stream's share of preview decodes in each of its steps: at most one preview per
        preview_interval_s and preview_share of the engine's time (previews are best effort)."""
        if not r.preview_every:
            return 0.0
        c = self.config
        rate = min(1.0 / r.preview_every, step / c.preview_interval_s if c.preview_interval_s > 0 else 1.0)
        return min(self.latency.decode(r.n) * rate, c.preview_share * step)

    def deadline_tokens(self, req: Request, now: float, batch: int, wait_s: float = 0.0,
                        ahead: int | None = None, best_effort_previews: bool = True) -> int:
        """Steps that fit before the deadline at `batch` rows, after waiting, decoding (behind
        `ahead` rows with earlier deadlines) and responding."""
        c, lat = self.config, self.latency
        overhead = wait_s + c.safety * lat.finish_decode(req.n, ahead) + self.margin()
        step = lat.step(batch)
        per_step = c.safety * step
        if req.preview_every and best_effort_previews:
            per_step += c.safety * self.preview_cost_per_step(req, step)
        elif req.preview_every:  # every nominal preview decoded: one every preview_every steps
            per_step += c.safety * lat.decode(req.n) / req.preview_every
        return max(0, math.floor((req.deadline - now - overhead) / per_step + 1e-9))

    def wait_estimate(self, running: int, waiting: int, n: int, mean_planned: float) -> float:
        """How long a request of n rows may wait for a row when everything admitted steps."""
        B = self.config.max_batch
        excess = running + waiting + n - B
        if excess <= 0:
            return self.latency.iteration_in_flight(running)
        # rows free up as sequences finish: about mean_planned steps per generation
        return self.latency.step(B) * mean_planned * min(1.0, excess / B)

    def retry_after(self, running: int, mean_planned: float) -> float:
        return max(1.0, self.latency.step(max(1, running)) * mean_planned)
