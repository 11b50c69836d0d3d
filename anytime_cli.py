"""The `anytime` command: dispatches to models (train, evaluate, export), service (serve, generate, plan) and bench."""
from __future__ import annotations

import sys

# packages of pyproject.toml's extras -> the extra (the base install serves exported models only)
EXTRAS = {"torch": "torch", "onnxscript": "torch", "scipy": "torch", "matplotlib": "torch", "onnx": "torch",
          "aiohttp": "bench", "onnxruntime": "cpu"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    groups = {
        "train": "models.cli", "evaluate": "models.cli", "export": "models.cli", "check": "models.cli", "data": "models.cli",
        "recover": "models.recover",
        "serve": "service.cli", "generate": "service.client", "plan": "service.capacity.cli",
        "bench": "bench.cli",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in groups:
        print("usage: anytime {" + ",".join(groups) + "} ...\n\n"
              "  train     train an OVQ-VAE, a prior or the evaluation classifier\n"
              "  evaluate  anytime quality curve (Frechet distance, MSE, label accuracy vs k)\n"
              "  export    TorchScript + ONNX model directory with manifest.json\n"
              "  check     check model directories against the contract (docs/model-format.md)\n"
              "  recover   training checkpoints from an exported directory's graphs\n"
              "  data      build a data set (spoken digits)\n"
              "  serve     run the HTTP service\n"
              "  generate  request samples from a running server\n"
              "  plan      replicas needed for a traffic (simulates the scheduler over a replica's measured costs)\n"
              "  bench     load and engine benchmarks")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    try:
        return importlib.import_module(groups[argv[0]]).main(argv) or 0
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        extra = "bench" if argv[0] == "bench" and top in ("aiohttp", "matplotlib") else EXTRAS.get(top)
        if extra is None:
            raise
        print(f"anytime {argv[0]}: needs the {e.name} package, which is not installed: pip install 'anytime[{extra}]'",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
