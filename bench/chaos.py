"""Chaos: steady mixed traffic while a random frontend worker is killed (`kill -9`) every few
seconds. What must hold: every request that reached a surviving worker is answered (200, or a
503 refusal with its reason); a request on the killed worker fails only by a broken connection,
and its one retry is answered; a replacement worker serves within a second; the engine core
ends with no active or queued sequence; the supervisor's memory and open files stay flat.

`anytime bench chaos` runs it for minutes and writes bench/results/chaos/; the test suite runs
the same code for 30 s (tests/service/test_chaos.py)."""
from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

BROKEN = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError)


@dataclass
class ChaosReport:
    seconds: float = 0.0
    requests: int = 0  # first attempts
    ok: int = 0  # 200 (a stream: its final event)
    refused: int = 0  # 503 with a reason (load, at the door; or a stream's error event)
    stream_errors: int = 0  # of those, streams admitted and then refused (their `error` event)
    abandoned: int = 0  # the client gave up on purpose (its request is cancelled in the core)
    resets: int = 0  # broken connections (the killed worker's requests and idle keep-alives)
    retried_ok: int = 0  # retries of a reset that got an HTTP answer
    retried_failed: int = 0
    unexpected: dict = field(default_factory=dict)  # any other status: must stay empty
    failed_retries: list = field(default_factory=list)  # what broke a retry (kind, error), if any
    kills: int = 0
    replaced_s: list = field(default_factory=list)  # kill -> a replacement connected and serving
    leaked_sequences: float = 0.0  # active + queued in the core at the end
    workers_lost: float = 0.0  # the core's count of workers that died without a clean exit
    supervisor_rss_kb: tuple = (0, 0)  # after warm-up, at the end
    supervisor_fds: tuple = (0, 0)
    # every sample_every_s: (seconds, {role: RSS kB}) for the engine core, the workers (summed
    # over the serving ones; a replaced worker starts anew) and the supervisor
    rss: list = field(default_factory=list)


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's serving frontend workers (not its standby), by process name."""
    out = subprocess.run(["pgrep", "-P", str(supervisor), "-x", "anytime-worker"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def roles(supervisor: int) -> dict[str, list[int]]:
    """The supervisor's children by role (their process names), and the supervisor itself."""
    out = {"supervisor": [supervisor]}
    for name, role in (("anytime-core", "core"), ("anytime-worker", "workers"), ("anytime-standby", "standby")):
        found = subprocess.run(["pgrep", "-P", str(supervisor), "-x", name], capture_output=True, text=True).stdout
        out[role] = [int(p) for p in found.split()]
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # it exited meanwhile
        pass
    return 0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def metric(text: str, name: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


async def _one(session: aiohttp.ClientSession, base: str, rng: random.Random, report: ChaosReport) -> None:
    deadline = int(round(math.exp(rng.uniform(math.log(20), math.log(1000)))))
    body = {"deadline_ms": deadline, "n": rng.choice((1, 4, 16)), "seed": rng.randrange(1 << 30)}
    kind = rng.choices(("plain", "stream", "abandon"), (0.7, 0.2, 0.1))[0]
    if kind == "stream":
        body.update(stream=True, preview_every=8)
    report.requests += 1
    for attempt in (0, 1):
        try:
            timeout = aiohttp.ClientTimeout(total=deadline / 2000 if kind == "abandon" else 30)
            async with session.post(base + "/generate", json=body, timeout=timeout) as r:
                data = await r.read()
                status = r.status
                if status == 200 and kind == "stream" and b"event: final" not in data:
                    if b"event: error" not in data:
                        raise aiohttp.ClientPayloadError("the stream ended without its final event")
                    status = json.loads(data.split(b"event: error\ndata: ")[1].split(b"\n")[0])["error"]["code"]
                    data = b'{"error": {"message": "an error event"}}'
                    report.stream_errors += 1
        except asyncio.TimeoutError:
            if kind == "abandon":
                report.abandoned += 1
                return
            status = -2
        except BROKEN as e:
            if attempt == 0:
                report.resets += 1
                continue
            report.retried_failed += 1
            report.failed_retries.append(f"{kind}: {type(e).__name__}: {e}")
            return
        if attempt == 1:
            report.retried_ok += 1
        if status == 200:
            report.ok += 1
        elif status == 503 and json.loads(data)["error"]["message"]:
            report.refused += 1
        else:
            report.unexpected[str(status)] = report.unexpected.get(str(status), 0) + 1
        return


async def _client(base: str, seed: int, end: float, report: ChaosReport) -> None:
    rng = random.Random(seed)
    # half the clients keep their connection (it stays on one worker), half connect anew for
    # every request (the kernel spreads those over the workers)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=seed % 2 == 1)) as session:
        while time.monotonic() < end:
            await _one(session, base, rng, report)
            await asyncio.sleep(rng.uniform(0, 0.02))


async def _killer(base: str, supervisor: int, workers: int, end: float, every_s: float, seed: int,
                  report: ChaosReport) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        while time.monotonic() + every_s < end:
            await asyncio.sleep(every_s * rng.uniform(0.5, 1.5))
            pids = worker_pids(supervisor)
            if len(pids) < workers:
                continue
            victim = rng.choice(pids)
            subprocess.run(["kill", "-9", str(victim)], check=True)
            killed = time.monotonic()
            report.kills += 1
            # replaced: W workers again, all connected to the engine core (its gauge), one of them new
            while time.monotonic() - killed < 10:
                pids_now = worker_pids(supervisor)
                if len(pids_now) == workers and victim not in pids_now:
                    async with session.get(base + "/metrics") as r:
                        if metric(await r.text(), "anytime_frontend_workers") == workers:
                            break
                await asyncio.sleep(0.01)
            report.replaced_s.append(round(time.monotonic() - killed, 3))


async def _sample_memory(supervisor: int, start: float, end: float, every_s: float, report: ChaosReport) -> None:
    while time.monotonic() < end:
        by_role = roles(supervisor)
        report.rss.append((round(time.monotonic() - start, 1),
                           {role: sum(rss_kb(p) for p in pids) for role, pids in by_role.items()}))
        await asyncio.sleep(every_s)


async def run_chaos(base: str, supervisor: int, workers: int, seconds: float, kill_every_s: float | None = 5.0,
                    clients: int = 6, seed: int = 0, sample_every_s: float = 5.0) -> ChaosReport:
    """Drive `clients` closed-loop clients for `seconds` while killing a worker every
    `kill_every_s` (None: never, a memory soak); then let the core drain."""
    report = ChaosReport()
    async with aiohttp.ClientSession() as session:  # every worker connected (readiness needs only one)
        for _ in range(600):
            async with session.get(base + "/metrics") as r:
                if metric(await r.text(), "anytime_frontend_workers") >= workers:
                    break
            await asyncio.sleep(0.05)
    rss0, fds0 = rss_kb(supervisor), open_fds(supervisor)
    start = time.monotonic()
    end = start + seconds
    tasks = [_sample_memory(supervisor, start, end, sample_every_s, report),
             *(_client(base, seed * 1000 + i, end, report) for i in range(clients))]
    if kill_every_s:
        tasks.append(_killer(base, supervisor, workers, end, kill_every_s, seed, report))
    await asyncio.gather(*tasks)
    report.seconds = round(time.monotonic() - start, 1)
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # abandoned requests are cancelled within an engine iteration or two
            async with session.get(base + "/metrics") as r:
                text = await r.text()
            report.leaked_sequences = metric(text, "anytime_active_sequences") + metric(text, "anytime_queue_depth")
            if report.leaked_sequences == 0:
                break
            await asyncio.sleep(0.05)
        report.workers_lost = metric(text, "anytime_frontend_workers_lost_total")
    report.supervisor_rss_kb = (rss0, rss_kb(supervisor))
    report.supervisor_fds = (fds0, open_fds(supervisor))
    return report


def memory_growth(report: ChaosReport, warmup_s: float) -> dict[str, tuple[float, float, float]]:
    """Per role: (RSS MB at the first sample after warm-up, at the last, growth in %)."""
    samples = [(t, rss) for t, rss in report.rss if t >= warmup_s] or report.rss
    if not samples:
        return {}
    first, last = samples[0][1], samples[-1][1]
    return {role: (first[role] / 1024, last[role] / 1024, 100 * (last[role] / first[role] - 1) if first[role] else 0.0)
            for role in ("core", "workers", "supervisor")}


def write_report(report: ChaosReport, out: Path, header: str, commit: str, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    growth = memory_growth(report, warmup_s)
    (out / "chaos.json").write_text(json.dumps({**asdict(report), "commit": commit, "warmup_s": warmup_s,
                                                "growth": growth}, indent=1) + "\n")
    r = report
    rows = [("seconds of traffic", r.seconds), ("requests (first attempts)", r.requests), ("200", r.ok),
            ("503 refusals", r.refused), ("of them, streams refused after admission (error event)", r.stream_errors),
            ("abandoned by the client on purpose", r.abandoned),
            ("broken connections", r.resets), ("their retries answered", r.retried_ok),
            ("their retries failed", r.retried_failed), ("any other outcome", sum(r.unexpected.values())),
            ("workers killed (kill -9)", r.kills),
            ("replacement serving, max s", max(r.replaced_s, default="–")),
            ("replacement serving, median s", sorted(r.replaced_s)[len(r.replaced_s) // 2] if r.replaced_s else "–"),
            ("workers lost, as the engine core counted them", r.workers_lost),
            ("leaked sequences (active + queued at the end)", r.leaked_sequences),
            ("supervisor open files, start -> end", f"{r.supervisor_fds[0]} -> {r.supervisor_fds[1]}")]
    rows += [(f"RSS of the {role} after {warmup_s:.0f} s of warm-up -> end, MB",
              f"{a:.1f} -> {b:.1f} ({g:+.2f}%)") for role, (a, b, g) in growth.items()]
    table = "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    (out / "chaos.md").write_text(f"{header}\n{table}\n\n![memory](memory.png)\n")
    fig, ax = plt.subplots(figsize=(8, 4))
    for role in ("core", "workers", "supervisor"):
        ax.plot([t for t, _ in r.rss], [rss[role] / 1024 for _, rss in r.rss], label=role)
    ax.axvline(warmup_s, color="gray", linestyle=":", label="end of warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("Resident memory by process role")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=100)
    plt.close(fig)


def run_cli(flags: list[str], args) -> None:
    """`anytime bench chaos`: a server of its own, the traffic, the report."""
    from .machine import header
    from .server_proc import serve

    kills = args.kill_every or None
    # kills come faster than the crash-loop limit would allow: that limit is for real crashes
    deaths = str(max(5, int(120 / kills) + 5)) if kills else "5"
    from .machine import commit as measured_commit

    commit = measured_commit()
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(*flags, "--workers", str(args.workers), "--worker-deaths-limit", deaths,
               log_path=args.out / "server.log") as url:
        report = asyncio.run(run_chaos(url, serve.last_pid, args.workers, args.duration, kills, args.clients))
    title = (f"Chaos: {args.duration:.0f} s of mixed traffic, a frontend worker killed every ~{kills:.0f} s"
             if kills else f"Memory soak: {args.duration:.0f} s of mixed traffic")
    text = header(title) + (f"\nTraffic: {args.clients} closed-loop clients; deadlines log-uniform 20-1000 ms, "
                            f"n in {{1, 4, 16}}; 70% plain, 20% streamed (a preview every 8 tokens), 10% abandoned "
                            f"by the client at half their deadline. {args.workers} frontend workers.\n")
    write_report(report, args.out, text, commit, args.warmup)
    (args.out / "server.log").unlink(missing_ok=True)
