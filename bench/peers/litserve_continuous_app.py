"""The model behind LitServe's continuous-batching loop (ContinuousBatchingLoop): requests join
the running batch between prior steps. LitServe requires streaming for this loop; the answer is
streamed as one JSON line when the request's samples are decoded.

python -m bench.peers.litserve_continuous_app --port 8104"""
from __future__ import annotations

import argparse

import litserve as ls
from litserve.loops import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus

from .continuous import ContinuousStepper
from .generator import FullLengthGenerator, encode_samples, request_samples
from .settings import peer_settings

SETTINGS = peer_settings("litserve-continuous")


class ContinuousAPI(ls.LitAPI):
    def setup(self, device):
        self.stepper = ContinuousStepper(FullLengthGenerator(SETTINGS["model_dir"]), SETTINGS["rows"])

    def add_request(self, uid, request):
        self.stepper.add(uid, request_samples(request))

    def has_capacity(self) -> bool:
        # a request whose rows do not fit yet waits in the stepper's FIFO until rows free up
        return self.stepper.rows_wanted() < self.stepper.slots

    def has_active_requests(self) -> bool:
        return self.stepper.has_work()

    def step(self, prev_outputs):
        outputs = []
        for f in self.stepper.step():
            outputs += [Output(f.uid, f.samples, LitAPIStatus.OK), Output(f.uid, "", LitAPIStatus.FINISH_STREAMING)]
        if not outputs and self.stepper.B:
            # The loop sleeps 10 ms after a step that returns nothing (it expects a token per
            # sequence per step). One empty chunk to one running request keeps it stepping, at the
            # least inter-process traffic (a chunk per sequence per step would be 64 per sample).
            outputs.append(Output(self.stepper.owner[0], "", LitAPIStatus.OK))
        return outputs

    def encode_response(self, output):
        return "" if isinstance(output, str) else {"samples": encode_samples(output)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    api = ContinuousAPI(stream=True, api_path="/generate", loop=ContinuousBatchingLoop(max_sequence_length=64))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=SETTINGS["timeout"])
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
