"""The model behind Ray Serve: one deployment whose @serve.batch method runs full-length
generation; each request's deadline arrives as Ray's x-request-timeout-seconds header.

python -m bench.peers.ray_serve_app --port 8102   (starts a local Ray instance; blocks)"""
from __future__ import annotations

import argparse
import os
import time

import ray
from ray import serve
from starlette.requests import Request

from .generator import FullLengthGenerator, encode_samples, request_samples
from .settings import peer_settings

SETTINGS = peer_settings("ray-serve")


@serve.deployment(num_replicas=SETTINGS["num_replicas"], max_ongoing_requests=SETTINGS["max_ongoing_requests"],
                  max_queued_requests=SETTINGS["max_queued_requests"])
class FullLength:
    def __init__(self):
        self.generator = FullLengthGenerator(SETTINGS["model_dir"])

    @serve.batch(max_batch_size=SETTINGS["max_batch_size"], batch_wait_timeout_s=SETTINGS["batch_wait_timeout_s"],
                 batch_size_fn=lambda requests: sum(len(specs) for specs in requests))
    async def generate(self, requests: list[list]) -> list[dict]:
        samples = self.generator.generate([s for specs in requests for s in specs])
        out, start = [], 0
        for specs in requests:
            out.append({"samples": encode_samples(samples[start:start + len(specs)])})
            start += len(specs)
        return out

    async def __call__(self, request: Request) -> dict:
        return await self.generate(request_samples(await request.json()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    # Ray starts its workers (the replica) at niceness 15 by default, so that the driver and
    # raylet keep priority; on this 2-core machine it would lose the CPU to the load generator,
    # which a production client would not share. Same priority as every other server here.
    os.environ["RAY_worker_niceness"] = str(SETTINGS["worker_niceness"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port,
                              "request_timeout_s": SETTINGS["request_timeout_s"]})
    serve.run(FullLength.bind(), route_prefix="/generate")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
