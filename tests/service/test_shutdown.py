"""SIGTERM on a real `anytime serve` process: readiness off at once, in-flight answered, exit 0."""
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.utils.faults import slow_server_env
from tests.utils.server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_drains_then_exits(tiny_model_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(tiny_model_dir),
                             "--port", str(port)], cwd=ROOT, env=slow_server_env(60),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        results = []

        def call(seed):
            results.append(httpx.post(base + "/generate", json={"deadline_ms": 3000, "seed": seed}, timeout=10))

        threads = [threading.Thread(target=call, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while "anytime_active_sequences{model=\"tiny\"} 3.0" not in httpx.get(base + "/metrics").text:
            assert time.monotonic() < end, "requests never became active"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        assert httpx.get(base + "/readyz", timeout=2).status_code == 503
        late = httpx.post(base + "/generate", json={"deadline_ms": 1000}, timeout=2)
        assert late.status_code == 503 and "draining" in late.json()["error"]["message"]
        for t in threads:
            t.join(10)
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        assert all(r.json()["deadline_met"] for r in results)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
