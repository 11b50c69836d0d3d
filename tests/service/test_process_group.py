"""The process group survives its parts: a killed frontend worker is replaced while the other
serves on, its requests are cancelled in the engine core; a worker that cannot start ends the
server with the cause; Ctrl-C drains cleanly; and a chaos run (workers killed at random under
mixed traffic) loses nothing but the killed workers' connections."""
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from bench.chaos import metric, run_chaos, worker_pids
from tests.utils.server import ROOT, free_port, serve_process


def test_a_killed_worker_is_replaced_and_the_other_workers_requests_complete(tiny_model_dir, tmp_path):
    with serve_process(tiny_model_dir, "--workers", "2", step_delay_ms=100,
                       log_path=tmp_path / "server.log") as (base, proc):
        first = worker_pids(proc.pid)
        assert len(first) == 2
        end = time.monotonic() + 30  # both connected to the engine core (readiness needs only one)
        while metric(httpx.get(base + "/metrics").text, "anytime_frontend_workers") != 2:
            assert time.monotonic() < end
            time.sleep(0.05)
        results, lock = [], threading.Lock()

        def slow(i):  # 8 steps of 100 ms each: in flight when the worker dies
            try:
                with httpx.Client(timeout=10) as c:  # a connection each: both workers get some
                    r = c.post(base + "/generate", json={"deadline_ms": 8000, "seed": i})
                out = r.status_code
            except httpx.TransportError:
                out = "reset"
            with lock:
                results.append(out)

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        os.kill(first[0], signal.SIGKILL)
        killed = time.monotonic()
        while True:
            now = worker_pids(proc.pid)
            if len(now) == 2 and first[0] not in now and \
                    metric(httpx.get(base + "/metrics").text, "anytime_frontend_workers") == 2:
                break
            assert time.monotonic() - killed < 1.0, "no replacement serving within a second"
            time.sleep(0.01)
        for t in threads:
            t.join(15)
        # the survivor's requests all complete; the dead one's fail only by a broken connection
        assert set(results) <= {200, "reset"} and results.count(200) >= 1, results
        assert proc.poll() is None
        with httpx.Client(base_url=base, timeout=10) as c:
            assert all(c.post("/generate", json={"deadline_ms": 5000}).status_code == 200 for _ in range(4))
            end = time.monotonic() + 5
            while True:  # the dead worker's requests were cancelled: nothing left in the core
                text = c.get("/metrics").text
                if metric(text, "anytime_active_sequences") + metric(text, "anytime_queue_depth") == 0:
                    break
                assert time.monotonic() < end, "sequences leaked"
                time.sleep(0.05)
            assert metric(text, "anytime_frontend_workers_lost_total") == 1
            assert c.get("/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_ctrl_c_drains_every_process_and_exits_0_without_errors(tiny_model_dir, tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole process group, the workers included."""
    log_path, port = tmp_path / "server.log", free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(tiny_model_dir),
                                 "--port", str(port), "--workers", "2"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            end = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=1).status_code == 200 and \
                            metric(httpx.get(base + "/metrics").text, "anytime_frontend_workers") == 2:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < end and proc.poll() is None
                time.sleep(0.05)
            assert httpx.post(base + "/generate", json={"deadline_ms": 5000}).status_code == 200
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert '"ERROR"' not in text and "Traceback" not in text, text[-3000:]
    assert "second signal" not in text  # one Ctrl-C is one drain, in every process
    assert text.count("drained 0 in-flight requests") == 2 and "engine core drained" in text


def test_a_worker_that_cannot_start_ends_the_server_with_the_cause(tiny_model_dir, tmp_path):
    """A fault that repeats at every start is not fixed by restarting forever: the server exits
    non-zero within seconds and says why (the fault is injected through sitecustomize)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import sys\n"
        "class Fault:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'service.frontend.app':\n"
        "            raise RuntimeError('injected start-up fault')\n"
        "sys.meta_path.insert(0, Fault())\n")
    env = {**os.environ, "PYTHONPATH": f"{inject}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(tiny_model_dir),
                                 "--port", str(free_port()), "--workers", "2"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 60
            while "\"serving\"" not in log_path.read_text():  # the engine core is warm
                assert proc.poll() is None and time.monotonic() < end, log_path.read_text()[-2000:]
                time.sleep(0.02)
            serving = time.monotonic()
            assert proc.wait(30) == 1, log_path.read_text()[-3000:]
            assert time.monotonic() - serving < 10, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "fail at start-up" in text and "RuntimeError: injected start-up fault" in text, text[-2000:]


def test_chaos_short_form(tiny_model_dir, tmp_path):
    """30 s of mixed traffic (deadlines 20-1000 ms, n in 1/4/16, streams, abandoned requests)
    while a random worker is killed every few seconds."""
    with serve_process(tiny_model_dir, "--workers", "2", "--worker-deaths-limit", "100",
                       log_path=tmp_path / "server.log") as (base, proc):
        report = asyncio.run(run_chaos(base, proc.pid, workers=2, seconds=30, kill_every_s=6, clients=4))
        assert proc.poll() is None
    assert report.kills >= 3 and report.ok > 100, report
    assert report.unexpected == {} and report.retried_failed == 0, report
    assert report.resets <= report.kills * 4 + 4, report  # only the killed workers' connections
    assert report.retried_ok == report.resets
    assert max(report.replaced_s) < 1.0, report.replaced_s
    assert report.leaked_sequences == 0 and report.workers_lost == report.kills
    assert report.supervisor_fds[1] <= report.supervisor_fds[0], report.supervisor_fds
    assert report.supervisor_rss_kb[1] - report.supervisor_rss_kb[0] < 2048, report.supervisor_rss_kb
