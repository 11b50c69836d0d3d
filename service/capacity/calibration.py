"""A replica's measured costs, the input of the simulation: a prior step and a decode vs batch
size (what the engine's latency model starts from, service/core/profiling.py), a KV-cache row
copy, and the two costs outside the engine loop that deadlines pay for: from arrival to
admission, and from the decoded samples to the response. Saved and loaded as JSON.

Two ways to measure it:
- `from_server(url)`: a running replica, from outside, through its public API only. An idle
  replica answers requests of n rows with the tokens fixed; their `engine_ms` (first step to
  decoded samples) at k = D and k = 2 give the cost of one iteration at batch n (the runtime
  step and everything else the engine loop does per iteration) and of the decode (not k = 1:
  one-token samples come from the engine's first-token table without a decoder call, so k = 1
  measured no decode at all, only noise); `queue_ms`
  and the rest of `latency_ms` give the time before and after the engine. What it measures
  is the replica as deployed: its runtime, threads, frontend and machine.
- `from_profile(model_dir)`: the engine's own start-up profile of the runtime on this machine
  (bare runtime calls: no HTTP, no scheduling; the before/after costs are then defaults).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..catalog import ModelCard
from ..core.latency import LatencyModel
from ..settings import Settings
from ..frontend.validation import MAX_SAMPLES as API_MAX_N  # the largest n of one request

# Used when nothing measured them (from_profile): an idle replica's arrival-to-admission and
# decode-to-response times on the machine of bench/results/plan (see that report).
DEFAULT_ADMIT_S = 0.0015
DEFAULT_RESPOND_S = 0.0015
# A frontend worker's CPU per full-length n=1 JSON request (bench/results/cost/xeon-cbe4c73, at
# cbe4c73): its event loop's time per request when nothing fitted it to a loaded run
DEFAULT_FRONTEND_S = 0.30e-3
DEFAULT_SHED_LAG_S = Settings.model_fields["shed_lag_ms"].default / 1000  # the server's default
# The short requests of the API probe: two tokens, the fewest whose samples need the decoder
# (one-token samples come from the engine's first-token table, service/core/first_token.py).
SHORT_K = 2


@dataclass
class Calibration:
    model: str
    D: int
    quality: list[float]  # q(k) for k = 0..D, the model's quality curve (ModelCard.quality_k)
    step_s: dict[int, float]  # one engine iteration's step (with its sampling) at each batch size
    decode_s: dict[int, float]  # one decode of that many rows at k = D
    copy_row_s: float = 2e-6  # one KV-cache row copied (a pause or resume)
    admit_s: float = DEFAULT_ADMIT_S  # arrival at the frontend -> admission and the engine's first plan
    respond_s: float = DEFAULT_RESPOND_S  # decoded samples -> response ready (IPC, encoding)
    # Contention: every request per second on the replica makes the engine's steps and decodes
    # slower by this fraction, because the work it brings outside the engine loop (the frontend,
    # the engine core's per-request messages, a load generator on the same machine) takes CPU
    # from the engine's cores. An idle probe cannot see it; `anytime bench plan` fits it from
    # one loaded run of other arrivals (bench/results/plan). 0: cores to spare.
    contention_s: float = 0.0
    # What the same contention does beyond the mean (fitted by `anytime bench plan` on that
    # loaded run too, from the replica's anytime_deadline_margin_seconds): `jitter`, the sigma of
    # a log-normal factor on every simulated cost, gives the overruns of predicted costs that
    # the engine's deadline margin keeps free (preemption on shared cores). 0: an unloaded machine.
    jitter: float = 0.0
    # The frontend: each of `frontend_workers` event loops is a queue (service/capacity/replica.py)
    # in which a request takes `frontend_s` of loop time (parsing, validating and admitting it,
    # then encoding and sending its answer), slowed by the contention and jitter as the engine's
    # costs are; a loop that runs behind sheds new requests by the server's rule at `shed_lag_s`
    # (service/frontend/shedding.py). Queueing there is what makes responses slower, and requests
    # shed, as the request rate nears what the workers can parse. `anytime bench plan` fits
    # frontend_s to the response margin of a loaded run; 0: no frontend queue.
    frontend_s: float = DEFAULT_FRONTEND_S
    frontend_workers: int = 1
    shed_lag_s: float = DEFAULT_SHED_LAG_S
    # The engine thread's own work in each planned iteration, per live request (the plan, the
    # step inputs rebuilt when rows change, the outputs): the API calibration sends one request
    # at a time and cannot see it. The engine learns it as part of its step cost; fitted by
    # `anytime bench plan` to the step count of the loaded run. 0: none.
    plan_request_s: float = 0.0
    max_batch: int | None = None  # the replica's max_batch when not the default (a GPU projection)
    source: str = ""  # how it was obtained: what a report quotes
    measured: dict = field(default_factory=dict)  # date, machine, backend, command: provenance

    def latency_model(self, clock) -> LatencyModel:
        """A fresh latency model on `clock`, as the engine's start-up profile would give it."""
        return LatencyModel(self.step_s, self.decode_s, copy_row_s=self.copy_row_s, clock=clock)

    def with_profile_decode(self, profile: "Calibration") -> "Calibration":
        """This calibration with the decode (and row-copy) costs of the engine's start-up profile.
        Through the API a decode cannot be told apart from the plan of the iteration before it
        (k = 2 requests pay a first plan the k = D ones amortise), so a probed decode carries
        about half a millisecond of fixed cost per call that the decoder does not have; the
        engine decodes finishing requests in calls of about 2 ms, so that cost would be paid
        many times per iteration under load. The API keeps what it measures well: the step of
        the deployed engine loop and the time before and after the engine."""
        if profile.D != self.D:
            raise ValueError(f"the profile's model has D={profile.D}, the replica's {self.D}")
        self.decode_s, self.copy_row_s = dict(profile.decode_s), profile.copy_row_s
        self.source += f"; decode from the {profile.source}"
        self.measured["decode_profile"] = profile.measured
        return self

    def quality_k(self) -> np.ndarray:
        return np.asarray(self.quality, dtype=np.float64)

    # ---- JSON ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        """ValueError with the file's name when it is not a calibration."""
        try:
            d = json.loads(Path(path).read_text())
            d["step_s"] = {int(b): float(s) for b, s in d["step_s"].items()}
            d["decode_s"] = {int(b): float(s) for b, s in d["decode_s"].items()}
            # files written before the frontend stage: their response time grew linearly with the
            # rate instead; they load with the default frontend
            d.pop("respond_contention_s", None)
            cal = cls(**d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a calibration file ({type(e).__name__}: {e})") from None
        if len(cal.quality) != cal.D + 1 or not cal.step_s or not cal.decode_s:
            raise ValueError(f"{path}: not a calibration file (quality curve or costs missing)")
        return cal


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"}


def from_profile(model_dir: Path, backend: str = "onnx", max_batch: int | None = None) -> Calibration:
    """The engine's start-up profile (service/core/profiling.py) of the model's runtime here."""
    from ..core.model_dir import load_model_dir
    from ..core.profiling import profile_runtime
    from ..core.runtime import make_runtime
    from ..core.scheduler import SchedulerConfig

    config = SchedulerConfig() if max_batch is None else SchedulerConfig(max_batch=max_batch)
    spec = load_model_dir(Path(model_dir), backend)
    runtime = make_runtime(spec, backend, config.slots())
    sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= config.max_batch} | {config.max_batch})
    lat = profile_runtime(runtime, spec, sizes)
    return Calibration(spec.name, spec.D, spec.quality_k.tolist(),
                       {int(b): float(c) for b, c in zip(lat.step.sizes, lat.step.costs)},
                       {int(b): float(c) for b, c in zip(lat.decode.sizes, lat.decode.costs)},
                       float(lat.copy.costs[0]), max_batch=max_batch,
                       source=f"start-up profile of the {backend} runtime (service/core/profiling.py)",
                       measured={**machine(), "backend": backend, "model_dir": Path(model_dir).name})


def from_server(url: str, model: str | None = None, sizes=(1, 2, 4, 8, 16, 32, 64, 128), repeats: int = 5,
                api_key: str | None = None) -> Calibration:
    """Measure an idle running replica through its API (module docstring). Requests go one at a
    time, so each steps alone at batch n; medians over `repeats`. A size above 64 (the API's
    largest n) is sent as requests of at most 64 at once, which the engine steps together: a
    full batch is where a loaded replica spends its time, and its cost there is not a straight
    line from smaller ones (the runtime's thread choice changes at a full batch, and larger
    batches are extrapolated by the latency model, linearly from the two largest sizes)."""
    import httpx

    try:
        return _measure_server(httpx, url, model, sizes, repeats, api_key)
    except httpx.HTTPError as e:  # connection refused, timeouts: a message, not a stack trace
        raise RuntimeError(f"{url}: {type(e).__name__}: {e}") from None


def _measure_server(httpx, url, model, sizes, repeats, api_key) -> Calibration:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as client:
        models = _get(client, "/models")["models"]
        name = model or next((m["name"] for m in models if m.get("default")), models[0]["name"])
        card = ModelCard.from_manifest(_get(client, f"/models/{name}")["manifest"])
        D = card.D

        def timed(n: int, k: int) -> dict:
            body = {"model": name, "n": n, "deadline_ms": 60000, "min_tokens": k, "max_tokens": k, "seed": 1}
            r = client.post("/generate", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: POST /generate n={n} answered {r.status_code}: {r.text[:200]}")
            out = r.json()
            if out["tokens"] != k:
                raise RuntimeError(f"{url}: asked for {k} tokens, got {out['tokens']} (is the replica idle?)")
            return out

        def rows(n: int, k: int) -> dict:
            """n rows at once: one request, or (past the API's n) several sent together, their
            engine times averaged."""
            if n <= API_MAX_N:
                return timed(n, k)
            parts = [API_MAX_N] * (n // API_MAX_N) + ([n % API_MAX_N] if n % API_MAX_N else [])
            with ThreadPoolExecutor(len(parts)) as pool:
                outs = list(pool.map(lambda m: timed(m, k), parts))
            return {"engine_ms": statistics.mean(o["engine_ms"] for o in outs)}

        for _ in range(3):  # warm the path
            timed(1, D)
        step, decode, before, after = {}, {}, [], []
        for n in sizes:
            full = [rows(n, D) for _ in range(repeats)]
            short = [rows(n, SHORT_K) for _ in range(repeats)]
            e_full = statistics.median(a["engine_ms"] for a in full) / 1000
            e_short = statistics.median(a["engine_ms"] for a in short) / 1000
            # engine(k) = k iterations that step + the decode: two sizes of k give both
            step[n] = max(1e-6, (e_full - e_short) / (D - SHORT_K))
            decode[n] = max(1e-6, e_short - SHORT_K * step[n])
            if n == 1:
                before += [a["queue_ms"] / 1000 for a in full + short]
                after += [(a["latency_ms"] - a["queue_ms"] - a["engine_ms"]) / 1000 for a in full + short]
        workers = _frontend_workers(client)
    return Calibration(name, D, card.quality_k.tolist(), step, decode,
                       admit_s=statistics.median(before), respond_s=max(0.0, statistics.median(after)),
                       frontend_workers=workers,
                       source=f"measured through the API of a running replica ({len(sizes)} batch sizes, "
                              f"medians of {repeats})",
                       measured={**machine(), "backend": card.backend, "device": card.device})


def _frontend_workers(client) -> int:
    """The replica's frontend workers, from its /metrics (anytime_frontend_workers); 1 when it
    does not say."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    if r.status_code == 200:
        for family in text_string_to_metric_families(r.text):
            if family.name == "anytime_frontend_workers" and family.samples:
                return max(1, int(family.samples[0].value))
    return 1


def _get(client, path: str) -> dict:
    r = client.get(path)
    if r.status_code != 200:
        raise RuntimeError(f"GET {path} answered {r.status_code}: {r.text[:200]}")
    return r.json()
