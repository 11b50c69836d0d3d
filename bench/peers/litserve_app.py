"""The model behind LitServe: a LitAPI whose batched predict runs full-length generation.

python -m bench.peers.litserve_app --port 8101"""
from __future__ import annotations

import argparse

import litserve as ls

from .generator import FullLengthGenerator, encode_samples, request_samples
from .settings import peer_settings


class FullLengthAPI(ls.LitAPI):
    def setup(self, device):
        self.generator = FullLengthGenerator(peer_settings("litserve")["model_dir"])

    def decode_request(self, request):
        return request_samples(request)

    def batch(self, inputs):
        return inputs  # a list of requests, each a list of SampleSpec

    def predict(self, batch):
        counts = [len(specs) for specs in batch]
        samples = self.generator.generate([s for specs in batch for s in specs])
        out, start = [], 0
        for c in counts:
            out.append(samples[start:start + c])
            start += c
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"samples": encode_samples(output)}


def build_server(settings: dict) -> ls.LitServer:
    api = FullLengthAPI(max_batch_size=settings["max_batch_size"], batch_timeout=settings["batch_timeout"],
                        api_path="/generate")
    return ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=settings["workers_per_device"],
                        timeout=settings["timeout"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    build_server(peer_settings("litserve")).run(host="127.0.0.1", port=args.port, num_api_servers=1,
                                                generate_client_file=False)


if __name__ == "__main__":
    main()
