"""`anytime bench cost`: the CPU a request costs, by server process role and request shape.

Each shape is driven from outside the server by `hey` (a light, closed-loop Go client) for a
few seconds; the CPU time of every server process (utime + stime from /proc, so a client
sharing the cores does not distort it) is read before and after and split by role: the engine
core, the frontend worker(s), the supervisor. With `--baseline CHECKOUT` a second server is
started from another checkout of the project and both are measured shape by shape, alternating,
in the same run: only ratios measured side by side are stable on shared machines.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from .machine import commit, header
from .process_cpu import ROLES, cpu_by_role, descendants, is_standby, role_of, snapshot
from .server_proc import ROOT, free_port, wait_ready

@dataclass
class Shape:
    name: str
    n: int  # samples per request
    concurrency: int
    path: str = "/generate"
    body: dict | None = None  # JSON body (None: GET)
    binary: bool = False  # the OIP v2 binary-tensor route


def shapes(D: int) -> list[Shape]:
    full = {"deadline_ms": 60000, "seed": 1, "min_tokens": D}
    return [
        Shape("healthz", 1, 32, "/healthz"),
        Shape("1-token n=1", 1, 32, body={"deadline_ms": 5000, "max_tokens": 1}),
        Shape("full n=1 json", 1, 64, body=full),
        # as many rows in flight as the batch holds: n=64 at 4 in flight fills it too (see targets)
        Shape("full n=1 json (full batch)", 1, 128, body=full),
        Shape("full n=1 png", 1, 64, body={**full, "format": "png"}),
        Shape("full n=1 npy", 1, 64, body={**full, "format": "npy"}),
        Shape("full n=1 OIP binary", 1, 64, "/v2/models/{model}/infer", binary=True,
              body={"deadline_ms": 60000, "min_tokens": D}),
        Shape("full n=64 json", 64, 4, body={**full, "n": 64}),
        Shape("full n=1 SSE, previews", 1, 64, body={**full, "stream": True, "preview_every": max(1, D // 8)}),
    ]


@dataclass
class Server:
    label: str
    url: str
    pid: int  # the supervisor (or the one in-process server)
    proc: subprocess.Popen | None = None
    model: str = ""
    D: int = 0
    pids: dict[str, list[int]] = field(default_factory=dict)
    # what its start-up chose from timings (a server started here; its log says): a side-by-side
    # run whose servers chose differently compares the choices, not the code
    chose: dict[str, object] = field(default_factory=dict)

    def describe(self) -> None:
        info = httpx.get(self.url + "/models", timeout=10).json()["models"]
        default = next(m for m in info if m["default"])
        self.model, self.D = default["name"], default["D"]
        self.pids = {}
        for p in descendants(self.pid):
            self.pids.setdefault(role_of(p), []).append(p)


def start(checkout: Path, label: str, flags: list[str], log_path: Path) -> Server:
    """`anytime serve` from a checkout (its own .venv when it has one), in its own process group."""
    python = checkout / ".venv" / "bin" / "python"
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(python if python.exists() else sys.executable), "-m", "anytime_cli", "serve",
                             "--port", str(port), *flags], cwd=checkout, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, 180.0, log_path)
    server = Server(label, url, proc.pid, proc)
    server.describe()
    server.chose = startup_choices(log_path.read_text(errors="replace"))
    return server


def startup_choices(log_text: str) -> dict[str, object]:
    """The timing-based choices a server's start-up logged (JSON lines): the batch below which
    the prior steps on one thread (service/core/step_threads.py), by model."""
    chose = {}
    for line in log_text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("message") == "step threads chosen":
            chose[f"one_thread_below[{rec.get('model')}]"] = rec.get("one_thread_below")
    return chose


def attach(label: str, url: str, pid: int) -> Server:
    server = Server(label, url.rstrip("/"), pid)
    server.describe()
    return server


def stop(server: Server) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


# ---- driving a shape -------------------------------------------------------------------------
def hey_args(server: Server, shape: Shape, tmp: Path) -> list[str]:
    url = server.url + shape.path.format(model=server.model)
    if shape.body is None:
        return [url]
    if not shape.binary:
        f = tmp / "body.json"
        f.write_text(json.dumps(shape.body))
        return ["-m", "POST", "-T", "application/json", "-D", str(f), url]
    seeds = np.array([1], dtype="<i8")
    head = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64",
                                   "parameters": {"binary_data_size": seeds.nbytes}}],
                       "parameters": {**shape.body, "binary_data_output": True}}).encode()
    f = tmp / "body.bin"
    f.write_bytes(head + seeds.tobytes())
    return ["-m", "POST", "-T", "application/octet-stream", "-H", f"Inference-Header-Content-Length: {len(head)}",
            "-D", str(f), url]


def parse_hey(text: str) -> tuple[float, dict[int, int]]:
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    return (float(rps.group(1)) if rps else 0.0), codes


def drive(server: Server, shape: Shape, load: str, tmp: Path) -> dict:
    """One cell: `load` is hey's `-z 2s` (a warm-up) or `-n 640` (every request sent is answered
    before the CPU is read: none is cut off half-way, as `-z` does at its end)."""
    args = hey_args(server, shape, tmp)
    before = snapshot(server.pid)
    batched = batch_counters(server)
    t = time.monotonic()
    text = subprocess.run(["hey", *load.split(), "-c", str(shape.concurrency), *args],
                          capture_output=True, text=True).stdout
    wall = time.monotonic() - t
    time.sleep(0.1)  # the last answers' reports (metrics) reach the engine core
    spent = cpu_by_role(before, snapshot(server.pid))
    steps, rows = np.subtract(batch_counters(server), batched)
    rps, codes = parse_hey(text)
    answered = sum(codes.values())
    ok = codes.get(200, 0)
    per_request = {r: spent[r] * 1000 / max(1, answered) for r in ROLES}
    per_request["total"] = sum(per_request[r] for r in ROLES)
    return {"requests": answered, "ok": ok, "codes": codes, "rps": rps, "wall_s": wall,
            "mean_batch": rows / steps if steps else None, "steps_per_sample": steps / max(1, answered * shape.n),
            "cpu_ms_per_request": per_request,
            "cpu_ms_per_sample": {r: v / shape.n for r, v in per_request.items()}}


def batch_counters(server: Server) -> tuple[float, float]:
    """(prior steps, rows stepped) so far, from the anytime_batch_size histogram in /metrics;
    zeros when the server does not export it."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = {s.name: s.value for f in text_string_to_metric_families(text) if f.name == "anytime_batch_size"
             for s in f.samples if s.name in ("anytime_batch_size_count", "anytime_batch_size_sum")}
    return found.get("anytime_batch_size_count", 0.0), found.get("anytime_batch_size_sum", 0.0)


def profile(server: Server, shape: Shape, seconds: float, tmp: Path, out: Path) -> list[Path]:
    """py-spy flame graphs of the engine core and a frontend worker while `shape` runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    slug = re.sub(r"[^a-z0-9]+", "-", f"{server.label}-{shape.name}".lower()).strip("-")
    svgs, procs = [], []
    for role in ("core", "frontend"):
        for pid in [p for p in server.pids.get(role, []) if not is_standby(p)][:1]:
            svg = out / f"flame-{slug}-{role}.svg"
            procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                           "--rate", "250", "--nonblocking", "--threads", "-o", str(svg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            svgs.append(svg)
    time.sleep(0.5)
    subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(shape.concurrency), *hey_args(server, shape, tmp)],
                   capture_output=True)
    for p in procs:
        p.wait(60)
    for svg in svgs:  # py-spy writes its own command line into the graph: no machine paths
        if svg.exists():
            svg.write_text(svg.read_text().replace(str(Path(spy).parent) + "/", ""))
    return [s for s in svgs if s.exists()]


# ---- throughput ratios -----------------------------------------------------------------------
def throughput_ratios(server: Server, rounds: int, tmp: Path) -> dict:
    """Two ratios of one server's throughput, from outside with hey, medians of alternating
    rounds: n=1 full-length requests/s over n=64 samples/s (hey -z 8s, 128 and 4 in flight):
    what per-request cost takes from batched work; 1-token requests/s over GET /healthz
    requests/s (5 s, 32 in flight each): the generate path against the framework's floor."""
    D = server.D
    full = {"deadline_ms": 60000, "seed": 1, "min_tokens": D}
    cells = [("n=1 full", Shape("n=1 full", 1, 128, body=full), 8), ("n=64", Shape("n=64", 64, 4, body={**full, "n": 64}), 8),
             ("healthz", Shape("healthz", 1, 32, "/healthz"), 5),
             ("1-token", Shape("1-token", 1, 32, body={"deadline_ms": 5000, "seed": 1, "max_tokens": 1}), 5)]
    r1, r2, raw = [], [], []
    for _ in range(rounds):
        rps = {}
        for name, shape, seconds in cells:
            text = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(shape.concurrency), *hey_args(server, shape, tmp)],
                                  capture_output=True, text=True).stdout
            rps[name] = parse_hey(text)[0]
        raw.append(rps)
        r1.append(rps["n=1 full"] / (rps["n=64"] * 64) if rps["n=64"] else 0.0)
        r2.append(rps["1-token"] / rps["healthz"] if rps["healthz"] else 0.0)
        print(f"{server.label}: {rps} -> n=1/n=64 {r1[-1]:.2f}, 1-token/healthz {r2[-1]:.2f}", flush=True)
    return {"n1_over_n64": statistics.median(r1), "one_token_over_healthz": statistics.median(r2), "rounds": raw}


# ---- the run ---------------------------------------------------------------------------------
def run(flags: list[str], out: Path, seconds: float, rounds: int, baseline: Path | None = None,
        url: str | None = None, pid: int | None = None, baseline_url: str | None = None,
        baseline_pid: int | None = None, only: list[str] | None = None, profile_shapes: list[str] = (),
        ratio_rounds: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="anytime-cost-"))
    try:
        servers.append(attach("this", url, pid) if url else start(ROOT, "this", flags, out / "server.log"))
        servers[0].commit = commit(ROOT)
        if baseline_url:
            servers.append(attach("baseline", baseline_url, baseline_pid))
            servers[1].commit = "attached"
        elif baseline is not None:
            servers.append(start(baseline, "baseline", flags, out / "server-baseline.log"))
            servers[1].commit = commit(baseline)
        todo = [s for s in shapes(servers[0].D) if not only or s.name in only]
        cells: dict[str, dict[str, list[dict]]] = {s.name: {v.label: [] for v in servers} for s in todo}
        for shape in todo:
            count = {}
            for server in servers:  # warm-up (connections, first-use code paths); it sizes the cells
                rps = drive(server, shape, "-z 1s", tmp)["rps"]
                c = shape.concurrency
                count[server.label] = max(4 * c, int(rps * seconds / c) * c)
            for i in range(rounds):
                for server in (servers if i % 2 == 0 else servers[::-1]):
                    load = f"-n {min(count.values())}"  # both servers answer the same requests
                    cells[shape.name][server.label].append(drive(server, shape, load, tmp))
                    r = cells[shape.name][server.label][-1]
                    print(f"{shape.name:24s} {server.label:8s} round {i + 1}: "
                          + " ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_request"].items())
                          + f" ms/request, {r['rps']:.0f} req/s, codes {r['codes']}", flush=True)
        ratios = {s.label: throughput_ratios(s, ratio_rounds, tmp) for s in servers} if ratio_rounds else {}
        flames = []
        for name in profile_shapes:
            shape = next(s for s in shapes(servers[0].D) if s.name == name)
            for server in servers:
                flames += [p.name for p in profile(server, shape, max(seconds, 8), tmp, out)]
    finally:
        for s in servers:
            stop(s)
        shutil.rmtree(tmp, ignore_errors=True)
    result = summarize(servers, todo, cells, flags, seconds, rounds)
    result["flame_graphs"] = flames
    result["throughput_ratios"] = ratios
    # the baseline checkout by its commit, not by where it lies on this machine
    unpath = (lambda text: text.replace(str(baseline), f"<checkout of {servers[1].commit}>")) if baseline else str
    (out / "cost.json").write_text(unpath(json.dumps(result, indent=1)))
    plot(result, out / "cost.png")
    (out / "cost.md").write_text(unpath(report(result)))
    return result


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _median(rows: list[dict], key: str, role: str) -> float:
    return statistics.median(r[key][role] for r in rows)


def summarize(servers: list[Server], todo: list[Shape], cells: dict, flags: list[str], seconds: float,
              rounds: int) -> dict:
    shown = [f.replace(str(ROOT) + "/", "") for f in flags]  # the report names no machine paths
    res = {"flags": shown, "seconds_per_cell": seconds, "rounds": rounds,
           "servers": {s.label: {"commit": s.commit, "model": s.model, "D": s.D,
                                 "processes": {r: len(p) for r, p in s.pids.items()}, "chose": s.chose}
                       for s in servers},
           "shapes": []}
    for shape in todo:
        row = {"shape": shape.name, "n": shape.n, "concurrency": shape.concurrency, "body": shape.body,
               "path": shape.path}
        for label, rows in cells[shape.name].items():
            row[label] = {"cpu_ms_per_request": {r: _median(rows, "cpu_ms_per_request", r) for r in (*ROLES, "total")},
                          "cpu_ms_per_sample": {r: _median(rows, "cpu_ms_per_sample", r) for r in (*ROLES, "total")},
                          "rps": statistics.median(r["rps"] for r in rows),
                          "mean_batch": _median_of(rows, "mean_batch"),
                          "steps_per_sample": _median_of(rows, "steps_per_sample"),
                          "non_200": sum(r["requests"] - r["ok"] for r in rows), "rounds": rows}
        res["shapes"].append(row)
    res["targets"] = targets(res)
    return res


def targets(res: dict) -> list[dict]:
    """Issue 24's measures, where the run has what they need."""
    by = {r["shape"]: r for r in res["shapes"]}
    has_base = "baseline" in res["servers"]
    out = []

    def ratio(shape, role, key="cpu_ms_per_request"):
        row = by.get(shape)
        if row is None or not has_base:
            return None
        b = row["baseline"][key][role]
        return row["this"][key][role] / b if b else None

    for name, shape, role, goal in (("1-token n=1: CPU across all processes", "1-token n=1", "total", 0.30),
                                    ("1-token n=1: engine core CPU", "1-token n=1", "core", 0.25),
                                    ("full-length n=1 JSON: frontend CPU", "full n=1 json", "frontend", 0.40)):
        v = ratio(shape, role)
        if v is not None:
            out.append({"measure": name + " vs baseline", "value": v, "target": f"<= {goal}", "met": v <= goal})
    # Per sample, n=1 against n=64 with the batch as full in both (128 in flight against 4 x 64):
    # the step graph's CPU per row falls as its batch grows, whoever sends the rows, so n=1 at 64
    # in flight (half the batch) is shown too but not held to the target.
    for shape, goal in (("full n=1 json (full batch)", 1.15), ("full n=1 json", None)):
        if shape not in by or "full n=64 json" not in by:
            continue
        for label in res["servers"]:
            a = by[shape][label]["cpu_ms_per_sample"]["total"]
            b = by["full n=64 json"][label]["cpu_ms_per_sample"]["total"]
            held = goal is not None and label == "this"
            out.append({"measure": f"full-length CPU per sample, n=1 ({by[shape]['concurrency']} in flight) / "
                                   f"n=64 ({label})", "value": a / b, "target": f"<= {goal}" if held else "",
                        "met": a / b <= goal if held else None})
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _server_line(label: str, v: dict) -> str:
    chose = "".join(f", {c} {x}" for c, x in v.get("chose", {}).items())
    return f"**{label}** at `{v['commit']}` (model `{v['model']}`, D={v['D']}, processes {v['processes']}{chose})"


def report(res: dict) -> str:
    servers = list(res["servers"])
    lines = [header("CPU per request by process role and request shape"),
             "Servers: " + "; ".join(_server_line(k, v) for k, v in res["servers"].items()) + ".",
             f"Server flags: `{' '.join(res['flags'])}`. Each cell: `hey -n N` (closed loop, the concurrency "
             f"in the table; N = about {res['seconds_per_cell']:g} s of the slower server's rate in a 1 s warm-up, "
             f"the same N for both servers), {res['rounds']} rounds alternating between the "
             "servers, medians. CPU = utime + stime of each server process from /proc (10 ms ticks), summed by "
             "role, divided by the requests answered. Mean batch (rows per prior step) and prior steps per "
             "sample: from the `anytime_batch_size` histogram in /metrics around each cell.", "",
             "| shape | n | conc. | server | core ms/req | frontend ms/req | supervisor | total ms/req | "
             "total ms/sample | req/s | mean batch | steps/sample | non-200 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["shapes"]:
        for label in servers:
            c = row[label]
            p = c["cpu_ms_per_request"]
            lines.append(f"| {row['shape']} | {row['n']} | {row['concurrency']} | {label} | {p['core']:.3f} | "
                         f"{p['frontend']:.3f} | {p['supervisor']:.3f} | {p['total']:.3f} | "
                         f"{c['cpu_ms_per_sample']['total']:.3f} | {c['rps']:.0f} | {_fmt(c.get('mean_batch'), 1)} | "
                         f"{_fmt(c.get('steps_per_sample'), 2)} | {c['non_200']} |")
    if len(servers) == 2:
        lines += ["", "Ratios this / baseline (CPU per request):", "",
                  "| shape | core | frontend | total |", "|---|---|---|---|"]
        for row in res["shapes"]:
            t, b = row["this"]["cpu_ms_per_request"], row["baseline"]["cpu_ms_per_request"]
            f = lambda r: f"{t[r] / b[r]:.2f}" if b[r] else "–"  # noqa: E731
            lines.append(f"| {row['shape']} | {f('core')} | {f('frontend')} | {f('total')} |")
    if res.get("throughput_ratios"):
        lines += ["", "Throughput ratios (hey from outside, medians of "
                  f"{len(next(iter(res['throughput_ratios'].values()))['rounds'])} rounds; n=1 full-length req/s at 128 in "
                  "flight over n=64 samples/s at 4; 1-token req/s over /healthz req/s, 32 in flight each):", "",
                  "| server | n=1 / n=64 | 1-token / healthz |", "|---|---|---|"]
        lines += [f"| {label} | {r['n1_over_n64']:.2f} | {r['one_token_over_healthz']:.2f} |"
                  for label, r in res["throughput_ratios"].items()]
    if res["flame_graphs"]:
        lines += ["", "Flame graphs (py-spy, 250 Hz, engine core and frontend worker under load): "
                  + ", ".join(f"[{f}]({f})" for f in res["flame_graphs"])]
    if res["targets"]:
        lines += ["", "| measure | value | target | met |", "|---|---|---|---|"]
        met = {None: "", True: "yes", False: "no"}
        lines += [f"| {t['measure']} | {t['value']:.2f} | {t['target']} | {met[t['met']]} |" for t in res["targets"]]
    lines += ["", "![CPU per request by role](cost.png)", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, servers = res["shapes"], list(res["servers"])
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(rows) * len(servers)))
    labels, y = [], 0
    colors = {"core": "#4477aa", "frontend": "#ee6677", "supervisor": "#bbbbbb"}
    for row in rows:
        for label in servers:
            left = 0.0
            for role in ROLES:
                v = row[label]["cpu_ms_per_sample"][role]
                ax.barh(y, v, left=left, color=colors[role], label=role if y == 0 else None)
                left += v
            labels.append(f"{row['shape']} ({label})")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per sample (per request for n=1)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def flame_summary(svg: Path, top: int = 25) -> list[tuple[str, float]]:
    """The frames of a py-spy flame graph with the largest share of samples (inclusive), for a
    text summary beside the SVG."""
    share: dict[str, float] = {}
    for name, pct in re.findall(r"<title>(.*?) \([0-9,]+ samples?, ([0-9.]+)%\)</title>", svg.read_text()):
        share[name] = share.get(name, 0.0) + float(pct)
    return sorted(share.items(), key=lambda kv: -kv[1])[:top]
