"""The model behind BentoML: a batchable API (adaptive batching) that runs full-length generation.

BentoML batches along a list argument, so a request sends its samples as `specs`, one
[seed, index, label] row per sample (label -1: unconditional); the answer is one base64 string of
float32 pixels per sample.

bentoml serve bench.peers.bentoml_service:FullLength --port 8103"""
from __future__ import annotations

import bentoml

from .generator import FullLengthGenerator, SampleSpec, encode_samples
from .settings import peer_settings

SETTINGS = peer_settings("bentoml")


def request_specs(body: dict) -> list[list[int]]:
    """The load generator's body as this service's `specs` rows."""
    label = body.get("label")
    return [[int(body["seed"]), i, -1 if label is None else int(label)] for i in range(int(body.get("n", 1)))]


@bentoml.service(workers=SETTINGS["workers"], threads=SETTINGS["threads"], traffic={"timeout": SETTINGS["timeout"]})
class FullLength:
    def __init__(self):
        self.generator = FullLengthGenerator(SETTINGS["model_dir"])

    @bentoml.api(route="/generate", batchable=True, max_batch_size=SETTINGS["max_batch_size"],
                 max_latency_ms=SETTINGS["max_latency_ms"])
    def generate(self, specs: list[list[int]]) -> list[str]:
        samples = self.generator.generate([SampleSpec(s, i, None if label < 0 else label) for s, i, label in specs])
        return encode_samples(samples)
