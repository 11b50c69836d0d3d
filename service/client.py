"""Python client: `generate(...)` for programs, `anytime generate ...` on the command line.

    from service.client import generate
    result = generate("http://127.0.0.1:8000", deadline_ms=200, label="sneaker", n=4)
    result.save("out/")                      # writes PNG/WAV files, returns their paths
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

EXTENSIONS = {"image/png": ".png", "audio/wav": ".wav"}


class GenerateError(RuntimeError):
    def __init__(self, status: int, message: str, retry_after: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass
class Result:
    meta: dict  # the JSON response without the samples
    samples: list[tuple[str, bytes]]  # (media_type, encoded bytes)
    previews: list[dict] = field(default_factory=list)  # streamed previews (tokens, quality, ...)

    def save(self, folder: str | Path, prefix: str = "sample") -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (media_type, data) in enumerate(self.samples):
            p = folder / f"{prefix}-{i}{EXTENSIONS.get(media_type, '.bin')}"
            p.write_bytes(data)
            paths.append(p)
        return paths


def _decode(samples: list[dict]) -> list[tuple[str, bytes]]:
    return [(s["media_type"], base64.b64decode(s["data"])) for s in samples]


def _raise_for(r: httpx.Response) -> None:
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise GenerateError(r.status_code, msg, r.headers.get("retry-after"))


def generate(url: str, deadline_ms: int, *, stream: bool = False, on_preview=None, api_key: str | None = None,
             timeout: float | None = None, **fields) -> Result:
    """POST /generate. With stream=True, `on_preview(preview_dict)` is called for each preview."""
    body = {"deadline_ms": deadline_ms, **{k: v for k, v in fields.items() if v is not None}}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = timeout or deadline_ms / 1000 + 10
    if not stream:
        r = httpx.post(url.rstrip("/") + "/generate", json=body, headers=headers, timeout=timeout)
        _raise_for(r)
        meta = r.json()
        return Result({k: v for k, v in meta.items() if k != "samples"}, _decode(meta["samples"]))
    previews = []
    with httpx.stream("POST", url.rstrip("/") + "/generate", json={**body, "stream": True}, headers=headers,
                      timeout=timeout) as r:
        if r.status_code != 200:
            r.read()
            _raise_for(r)
        event, data = None, []
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and event:
                payload = json.loads("\n".join(data))
                if event == "preview":
                    previews.append({k: v for k, v in payload.items() if k != "samples"})
                    if on_preview:
                        on_preview(payload)
                elif event == "error":
                    raise GenerateError(payload["error"]["code"], payload["error"]["message"])
                elif event == "final":
                    return Result({k: v for k, v in payload.items() if k != "samples"}, _decode(payload["samples"]),
                                  previews)
                event, data = None, []
    raise GenerateError(0, "stream ended without a final event")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="anytime generate", description="Request samples from a running server.")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--deadline-ms", type=int, required=True)
    ap.add_argument("--model")
    ap.add_argument("--label")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--min-tokens", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--stream", action="store_true", help="stream previews with a progress bar")
    ap.add_argument("--preview-every", type=int)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--out", type=Path, default=Path("samples"))
    a = ap.parse_args(argv)
    label = int(a.label) if a.label is not None and a.label.isdigit() else a.label
    fields = dict(model=a.model, label=label, n=a.n, seed=a.seed, min_tokens=a.min_tokens, max_tokens=a.max_tokens,
                  temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    try:
        if a.stream:
            from tqdm import tqdm

            bar = tqdm(desc="tokens", unit="tok")

            def on_preview(p):
                bar.total = p["max_tokens"]
                bar.n = p["tokens"]
                bar.set_postfix(quality=p["quality"])
                bar.refresh()

            result = generate(a.url, a.deadline_ms, stream=True, on_preview=on_preview, api_key=a.api_key,
                              preview_every=a.preview_every, **fields)
            bar.n = result.meta["tokens"]
            bar.close()
        else:
            result = generate(a.url, a.deadline_ms, api_key=a.api_key, **fields)
    except GenerateError as e:
        print(f"error {e.status}: {e.message}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"cannot reach {a.url}: {e}", file=sys.stderr)
        return 1
    paths = result.save(a.out)
    print(json.dumps({**result.meta, "files": [str(p) for p in paths]}, indent=1))
    return 0
