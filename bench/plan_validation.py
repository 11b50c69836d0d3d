"""`anytime bench plan`: the capacity planner against measurement. One replica, the same
traffic both ways (the load generator sends the very arrivals the simulation serves: same seed,
rate, deadlines and n mix), at multiples of the replica's full-length n=1 capacity. The planner
is calibrated from the running replica through its API (service/capacity/calibration.py), as a
user would; then each load runs on the replica and in the simulation, side by side."""
from __future__ import annotations

import asyncio
import collections
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.capacity.calibration import from_profile, from_server
from service.capacity.fleet import summarize
from service.capacity.replica import SimulatedReplica
from service.capacity.traffic import arrivals, mean_n

from .load_bench import measure_capacity
from .loadgen import run_load
from .machine import header
from .server_proc import serve
from .summary import summarize as summarize_records

TOLERANCE = 0.15  # relative, the target
PLAN_REQUEST_MAX_S = 60e-6  # the bisection's upper end for Calibration.plan_request_s
FRONTEND_MAX_S = 4e-3  # and for Calibration.frontend_s (a worker's loop time per request)
FIT_PASSES = 2  # rounds of fitting the jitter and the per-request work in turn


def measured_point(records) -> dict:
    s = summarize_records(records, 1.0)
    ok = [r for r in records if r.status == 200]
    reasons = collections.Counter((r.error or "")[:50] for r in records if r.status == 503)
    return {"requests": s["requests"], "on_time": s["attainment_all"], "refused": s["rejection_rate"],
            "errors": s["errors"], "mean_tokens": sum(r.tokens for r in ok) / max(1, len(ok)),
            "mean_quality": s["mean_quality"], "refusals_by_message": dict(reasons.most_common(5))}


def simulated_point(cal, rate, duration, deadlines, n_mix, seed, jitter) -> dict:
    sim = SimulatedReplica(cal, jitter=jitter, seed=seed)
    outcomes = sim.run(arrivals(rate, duration, deadlines, n_mix, seed))
    p = summarize(1, rate, outcomes)
    reasons = collections.Counter(o.refused for o in outcomes if o.refused)
    return {"requests": p.requests, "on_time": p.on_time, "refused": p.refused, "errors": 0,
            "mean_tokens": p.mean_tokens, "mean_quality": p.mean_quality, "runtime": sim.runtime_stats(),
            "refusals_by_reason": dict(reasons.most_common(5))}


RUNTIME = ("anytime_step_latency_seconds_count", "anytime_step_latency_seconds_sum", "anytime_batch_size_sum",
           "anytime_decode_latency_seconds_count", "anytime_decode_latency_seconds_sum")


def scrape(url: str) -> dict:
    """The replica's runtime counters and its latency model's online factors from /metrics."""
    out: dict = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name in RUNTIME:
                out[s.name] = out.get(s.name, 0.0) + s.value
            elif s.name == "anytime_latency_model_factor":
                out[f"factor_{s.labels['kind']}"] = s.value
            elif s.name == "anytime_deadline_margin_seconds":
                out[f"margin_{s.labels['part']}"] = s.value
    return out


def measured_load(url, rate, duration, deadlines, n_mix, seed) -> dict:
    """A measured run, with what the replica's /metrics says its runtime did meanwhile: steps,
    mean batch, decode calls and their mean cost, and the medians of the latency model's online
    factors (measured / start-up profile) and deadline margins sampled every 0.25 s during the run."""
    before, factors, stop = scrape(url), [], threading.Event()

    def sample():
        while not stop.wait(0.25):
            m = scrape(url)
            factors.append((m.get("factor_step", 1.0), m.get("factor_decode", 1.0), m.get("margin_respond", 0.0),
                            m.get("margin_jitter", 0.0)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        point = measured_point(asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=seed, progress=False)))
    finally:
        stop.set()
        sampler.join()
    after = scrape(url)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in RUNTIME}
    steps, decodes = d[RUNTIME[0]], d[RUNTIME[3]]
    mid = factors[4:-4] or factors or [(1.0, 1.0, 0.0, 0.0)]  # the run's steady part
    point["runtime"] = {"steps": int(steps), "mean_batch": d[RUNTIME[2]] / max(1, steps),
                        "mean_step_ms": 1000 * d[RUNTIME[1]] / max(1, steps), "decodes": int(decodes),
                        "mean_decode_ms": 1000 * d[RUNTIME[4]] / max(1, decodes),
                        "factor_step": statistics.median(f[0] for f in mid),
                        "factor_decode": statistics.median(f[1] for f in mid),
                        "margin_respond_ms": 1000 * statistics.median(f[2] for f in mid),
                        "margin_jitter_ms": 1000 * statistics.median(f[3] for f in mid)}
    return point


def tokens_per_request(point: dict) -> float:
    """Mean tokens over all requests, a refused one counting 0: it falls as contention grows,
    whether the replica gives fewer tokens or (its frontend shedding) refuses more requests; the
    mean over answers alone rises again once shedding spares the engine."""
    return point["mean_tokens"] * (1.0 - point["refused"])


def fit_contention(cal, measured: dict, rate, duration, deadlines, n_mix, seed, jitter, steps=10) -> float:
    """The contention (Calibration.contention_s) at which the simulation gives the tokens per
    request of a loaded run: more contention, fewer tokens, so a bisection finds it."""
    lo, hi, target = 0.0, 0.02, tokens_per_request(measured)
    for _ in range(steps):
        cal.contention_s = (lo + hi) / 2
        tokens = tokens_per_request(simulated_point(cal, rate, duration, deadlines, n_mix, seed, jitter))
        lo, hi = (cal.contention_s, hi) if tokens > target else (lo, cal.contention_s)
    return (lo + hi) / 2


def fit_loaded_run(cal, measured: dict, rate, duration, deadlines, n_mix, seed) -> None:
    """Everything Calibration takes from one loaded run, in turn until they settle: the frontend
    worker's loop time per request at which the simulated engine keeps as much free for the
    response as the measured one did (the slowest recent response, its median over the run);
    the jitter at which it keeps as much free for overruns; and the engine's work per live
    request at which it takes as many steps; each with the contention that gives the run's
    tokens per request."""
    rt = measured["runtime"]
    run = (rate, duration, deadlines, n_mix, seed)
    for _ in range(FIT_PASSES):  # each moves the others: more work per iteration, larger overruns
        _bisect(cal, "frontend_s", FRONTEND_MAX_S, measured, run,
                lambda sim: sim["margin_respond_ms"] < rt["margin_respond_ms"])
        _bisect(cal, "jitter", 0.8, measured, run, lambda sim: sim["margin_jitter_ms"] < rt["margin_jitter_ms"])
        # more work per iteration: fuller and fewer iterations
        _bisect(cal, "plan_request_s", PLAN_REQUEST_MAX_S, measured, run, lambda sim: sim["steps"] > rt["steps"])
    cal.contention_s = fit_contention(cal, measured, *run, None)


def _bisect(cal, name: str, hi: float, measured: dict, run: tuple, too_low) -> None:
    """Set cal.<name> in [0, hi] by bisection on `too_low(simulated runtime stats)`, each
    candidate with the contention that gives the measured tokens per request."""
    lo = 0.0
    for _ in range(6):
        setattr(cal, name, (lo + hi) / 2)
        cal.contention_s = fit_contention(cal, measured, *run, None, 8)
        sim = simulated_point(cal, *run, None)["runtime"]
        lo, hi = (getattr(cal, name), hi) if too_low(sim) else (lo, getattr(cal, name))
    setattr(cal, name, (lo + hi) / 2)


def mean_of_runs(runs: list[dict]) -> dict:
    """The mean of repeated measurements of one load (the first run's refusal messages), with
    each run's on-time rate, refusal rate and mean tokens under "runs"."""
    keys = ("on_time", "refused", "mean_tokens", "mean_quality")
    point = {**runs[0], **{k: statistics.mean(m[k] for m in runs) for k in keys}}
    point["runtime"] = {k: statistics.mean(m["runtime"][k] for m in runs) for k in runs[0]["runtime"]}
    point["runtime"]["steps"], point["runtime"]["decodes"] = (round(point["runtime"][k]) for k in ("steps", "decodes"))
    point["errors"] = sum(m["errors"] for m in runs)
    point["runs"] = [{k: m[k] for k in keys} for m in runs]
    return point


def run(flags: list[str], out: Path, loads: list[float], duration: float, deadlines: str, n_mix: str,
        seed: int = 0, jitter: float | None = None, rest_s: float = 3.0, fit_load: float = 1.5,
        model_dir: Path | None = None, backend: str = "onnx", repeats: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with serve(*flags, "--policy", "fixed", log_path=out / "capacity-server.log") as cap_url:
        capacity = asyncio.run(measure_capacity(cap_url, "1"))
    rows = []
    with serve(*flags, log_path=out / "server.log") as url:
        # the step and the time around the engine through the API, the decode from the engine's
        # start-up profile of the same runtime here (Calibration.with_profile_decode)
        cal = from_server(url).with_profile_decode(from_profile(model_dir, backend))
        time.sleep(rest_s)
        # contention: fitted on other arrivals (seed + 1) at another load than those validated
        fit_rate = fit_load * capacity / mean_n(n_mix)
        fit_run = measured_load(url, fit_rate, duration / 2, deadlines, n_mix, seed + 1)
        if jitter is None:  # jitter, response time and contention, all from this run
            fit_loaded_run(cal, fit_run, fit_rate, duration / 2, deadlines, n_mix, seed + 1)
        else:
            cal.contention_s = fit_contention(cal, fit_run, fit_rate, duration / 2, deadlines, n_mix,
                                              seed + 1, jitter)
        cal.save(out / "calibration.json")
        print(f"fitted at {fit_load}x: contention {1000 * cal.contention_s:.3f}e-3 per request/s, work "
              f"{1e6 * cal.plan_request_s:.1f} us per live request, jitter {cal.jitter:.3f}, frontend "
              f"{1000 * cal.frontend_s:.3f} ms per request on {cal.frontend_workers} worker(s) ({fit_run})")
        time.sleep(rest_s)
        # the same arrivals measured `repeats` times, in rounds over the loads (a drift of the
        # machine spreads over all of them): one run's refusal rate at 2x varies several-fold
        runs: dict[float, list[dict]] = {load: [] for load in loads}
        for _ in range(repeats):
            for load in loads:
                measured = measured_load(url, load * capacity / mean_n(n_mix), duration, deadlines, n_mix, seed)
                runs[load].append(measured)
                print(f"{load}x: measured {measured}", flush=True)
                time.sleep(rest_s)  # the replica forgets the run (pressure and the online correction fade)
        for load in loads:
            rate = load * capacity / mean_n(n_mix)
            simulated = simulated_point(cal, rate, duration, deadlines, n_mix, seed, jitter)
            rows.append({"load": load, "rate": rate, "measured": mean_of_runs(runs[load]), "simulated": simulated})
            print(f"{load}x: simulated {simulated}", flush=True)
    result = {"capacity_n1": capacity, "fit": {"load": fit_load, "seed": seed + 1, "measured": fit_run}, "duration_s": duration, "deadlines": deadlines, "n_mix": n_mix, "seed": seed,
              "jitter": cal.jitter if jitter is None else jitter, "repeats": repeats, "calibration": json.loads(cal.to_json()), "rows": rows}
    (out / "validation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "validation.md").write_text(markdown(result))
    return result


METRICS = (("on_time", "on-time rate (of all requests)", lambda v: f"{100 * v:.1f}%"),
           ("refused", "refusal rate", lambda v: f"{100 * v:.2f}%"),
           ("mean_tokens", "mean tokens (answered)", lambda v: f"{v:.1f}"))


def relative(sim: float, meas: float) -> float | None:
    return None if meas == 0 else sim / meas - 1


def markdown(r: dict) -> str:
    cal = r["calibration"]
    lines = [header("Capacity planner vs a measured replica"),
             f"One replica, the default settings; open-loop Poisson arrivals for {r['duration_s']:g} s at each load "
             f"(multiples of the replica's full-length n=1 capacity, {r['capacity_n1']:.1f} samples/s, measured on "
             f"a `fixed`-policy server as `anytime bench load` does); deadlines `{r['deadlines']}` ms, samples per "
             f"request `{r['n_mix']}`, seed {r['seed']}: the load generator and the simulation serve the same "
             "arrivals. The planner was calibrated from the running replica through its API, its decode from the engine's "
             f"start-up profile of the same runtime ([calibration.json](calibration.json): {cal['source']}; before the engine {1000 * cal['admit_s']:.2f} ms, "
             f"after it {1000 * cal['respond_s']:.2f} ms). What load does to it (the CPU the frontend and the load "
             f"generator take from the engine's cores on this 2-core machine) was fitted to one loaded run on other "
             f"arrivals (seed {r['fit']['seed']}, {r['fit']['load']:g}x, {r['duration_s'] / 2:g} s), before and apart "
             f"from the runs below: each planned engine iteration costs {1e6 * cal.get('plan_request_s', 0):.1f} us "
             f"per live request of the engine's own work (plan, step inputs, outputs), fitted to the steps it "
             f"took; engine steps slow by a fraction {1000 * cal['contention_s']:.3f}e-3 per request/s (decodes "
             f"do not), fitted to its tokens per request (a refusal counting 0); every cost varies by a log-normal factor of sigma "
             f"{cal.get('jitter', 0):.3f}, fitted to the overrun margin its engine kept; each request takes "
             f"{1000 * cal.get('frontend_s', 0):.3f} ms of a frontend worker's event loop "
             f"({cal.get('frontend_workers', 1)} worker(s), each a queue that sheds by the server's rule past "
             f"{1000 * cal.get('shed_lag_s', 0):.0f} ms behind), slowed by the same contention, fitted to the "
             f"response margin it kept (both margins: `anytime_deadline_margin_seconds`, medians of samples every "
             f"0.25 s).", "",
             f"Target: each predicted value within ±{100 * TOLERANCE:.0f}% (relative) of the measured one. "
             f"Measured: the mean of {r.get('repeats', 1)} runs of the same arrivals at each load (in rounds over "
             "the loads, on one replica), each run's value in brackets.", "",
             "| load | requests/s | metric | measured | predicted | relative error | within ±15% |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        for key, name, fmt in METRICS:
            m, s = row["measured"][key], row["simulated"][key]
            rel = relative(s, m)
            ok = (abs(rel) <= TOLERANCE) if rel is not None else (s == 0)
            each = row["measured"].get("runs", [])
            if len(each) > 1:
                m_text = f"{fmt(m)} ({', '.join(fmt(x[key]) for x in each)})"
            else:
                m_text = fmt(m)
            lines.append(f"| {row['load']:g}x | {row['rate']:.1f} | {name} | {m_text} | {fmt(s)} | "
                         f"{'n/a (measured 0)' if rel is None else f'{100 * rel:+.1f}%'} | {'yes' if ok else '**no**'} |")
    lines += ["", "What the runtime did at each load: measured from the replica's /metrics "
              "(`anytime_batch_size`, `anytime_step_latency_seconds`: the runtime call alone, "
              "`anytime_decode_latency_seconds`: every decode call, first-token table hits included; "
              "`anytime_latency_model_factor`: the engine's own online correction of its start-up profile, "
              "`anytime_deadline_margin_seconds`: what deadline decisions kept free for responses and overruns; "
              "medians of samples every 0.25 s during the run) vs the simulation (its iterations cost "
              "the calibrated step, which includes sampling and the engine loop's own work, times the "
              "contention, plus the work per live request of each planned iteration; its decode calls "
              "count table-only calls at 0 ms; its margins are the medians its admissions saw).", "",
              "| load | | steps | mean batch | mean step ms | decode calls | mean decode ms | step factor | decode factor "
              "| respond margin ms | overrun margin ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        m, s = row["measured"].get("runtime"), row["simulated"].get("runtime")
        if m:
            lines.append(f"| {row['load']:g}x | measured | {m['steps']} | {m['mean_batch']:.1f} | {m['mean_step_ms']:.2f} | "
                         f"{m['decodes']} | {m['mean_decode_ms']:.2f} | {m['factor_step']:.2f} | {m['factor_decode']:.2f} | "
                         f"{m.get('margin_respond_ms', 0):.1f} | {m.get('margin_jitter_ms', 0):.1f} |")
        if s:
            lines.append(f"| {row['load']:g}x | simulated | {s['steps']} | {s['mean_batch']:.1f} | {s['mean_step_ms']:.2f} | "
                         f"{s['decodes']} | {s['mean_decode_ms']:.2f} | | | "
                         f"{s.get('margin_respond_ms', 0):.1f} | {s.get('margin_jitter_ms', 0):.1f} |")
    lines += ["", "Requests sent / errors (measured): " + ", ".join(
        f"{row['load']:g}x {row['measured']['requests']} / {row['measured']['errors']}" for row in r["rows"]), "",
              "Measured refusals by message: " + "; ".join(f"{row['load']:g}x {row['measured']['refusals_by_message']}"
                                                        for row in r["rows"]), "",
              "Simulated refusals by reason: " + "; ".join(
                  f"{row['load']:g}x {row['simulated'].get('refusals_by_reason', {})}" for row in r["rows"]), ""]
    return "\n".join(lines)
