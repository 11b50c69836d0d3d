"""Service settings: one class, read from flags and `ANYTIME_*` environment variables."""
from __future__ import annotations

from pathlib import Path
import os
from typing import Literal, get_args

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
Policy = Literal["anytime", "fixed", "drop", "static"]
POLICIES = get_args(Policy)  # the one list of scheduling policies (service/core/scheduler.py)


SUPERVISOR_PID = "ANYTIME_SUPERVISOR_PID"  # set by the supervisor for the processes it starts


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the supervisor that started it dies, however it
    dies (a SIGKILLed supervisor cannot stop its children itself); elsewhere, nothing.

    A supervisor that died before this call (while this process was still importing) sends no
    signal any more: then this process has been re-parented, and it exits at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    expected = os.environ.get(SUPERVISOR_PID)
    if expected and os.getppid() != int(expected):
        os._exit(1)


def name_process(name: str) -> None:
    """Linux: the process's name in `top`, `ps -o comm` and `pgrep` (15 bytes at most):
    anytime-core, anytime-worker, anytime-standby. Elsewhere, nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, name.encode()[:15])  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def default_workers() -> int:
    """HTTP worker processes beside the engine core: one per core beyond the first, at least
    one (the engine core keeps a core busy under load; bench/results/split has the measurement),
    at most 8: one engine core serves them all, and the measurements behind the default were
    taken on 2 cores, so it does not grow unmeasured with the machine (--workers sets up to 64)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) - 1))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANYTIME_", extra="ignore")

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("ANYTIME_HOST", "HOST"))
    port: int = Field(8000, validation_alias=AliasChoices("ANYTIME_PORT", "PORT"))
    model_dirs: str = Field(str(DEFAULT_ZOO), description="comma-separated model directories or zoo folders")
    default_model: str | None = Field(None, description="model used when a request names none")
    backend: Literal["onnx", "torchscript"] = "onnx"
    device: Literal["cpu", "cuda"] | None = Field(None, description="default: cuda when present, else cpu")
    threads: int = Field(0, ge=0, description="intra-op threads per runtime (0: all cores)")
    decode_threads: int = Field(1, ge=0, description="intra-op threads of the ONNX decoder (0: as threads); one "
                                "by default: a second thread cost 1.1-1.4x the CPU per sample and made a "
                                "one-sample decode no faster")
    ort_spin: Literal["run", "on", "off"] = Field(
        "off", description="ONNX Runtime idle threads: never spin (off), spin only during a step (run), also after "
                           "it (on)")
    ort_io_binding: Literal["auto", "on", "off"] = Field(
        "auto", description="ONNX Runtime KV cache in device memory via I/O binding (on), in host memory (off); "
        "auto: on with CUDA, off on the CPU")
    workers: int = Field(default_factory=default_workers, ge=0, le=64, description="HTTP worker processes; "
                         "0 runs the engine core inside the one HTTP process (default: cores - 1, at least 1, at most 8)")
    worker_deaths_limit: int = Field(5, ge=0, description="frontend worker deaths within a minute that the "
                                     "supervisor replaces; one more ends the server non-zero (a crash loop)")
    standby_worker: bool = Field(True, description="keep one frontend worker imported and waiting, so a dead "
                                 "worker's replacement serves within a second (costs one idle process's memory)")
    policy: Policy = "anytime"
    max_batch: int = Field(128, ge=1, le=4096, description="sequences stepped together per model")
    max_queue: int = Field(4096, ge=0, description="sequences admitted and waiting for a batch row (bulk work "
                           "with seconds to spare may wait here while tighter requests step)")
    max_inflight: int = Field(4096, ge=1, description="HTTP requests in flight; beyond: 503 at once")
    shed_lag_ms: float = Field(10.0, ge=0, description="a worker whose event loop runs this far behind answers "
                               "new generation requests 503 overloaded before parsing them (0: off)")
    max_body_bytes: int = Field(65536, ge=1024, description="larger request bodies get 413 before parsing")
    respond_margin_ms: float = Field(6.0, ge=0, description="time kept for encoding and responding")
    safety: float = Field(1.25, ge=1.0, description="multiplies predicted costs in deadline decisions")
    quality_price: float = Field(1.0, ge=0, description="how hard steps are rationed by the quality curve under load")
    park_rows: int = Field(128, ge=0, le=4096, description="KV-cache slots beyond max_batch for rows that stand aside (policy anytime)")
    preview_interval_ms: float = Field(50.0, ge=0, description="least time between two previews of one stream (policy anytime)")
    preview_share: float = Field(0.25, gt=0, le=1, description="most of the engine's time spent on previews (policy anytime)")
    fair_share: float = Field(0.5, gt=0, le=1, description="under load, the largest share of max_batch one "
                              "request may ask for (policy anytime; larger ones get 503 fair_share)")
    headroom_deadline_ms: float = Field(100.0, gt=0, description="the reference request's deadline for the "
                                        "headroom signal (n=1): /headroom, anytime_headroom, the agent port")
    agent_port: int = Field(0, ge=0, le=65535, description="TCP port answering HAProxy's agent-check with this "
                            "replica's headroom as a weight (`75%`) or `drain` when not ready (0: off)")
    guidance_default: float = Field(1.0, ge=0, le=20, description="classifier-free guidance of labelled "
                                    "`guidance: \"auto\"` requests to a model that supports guidance and whose "
                                    "manifest names no default (0: off; 1 measured best for FD on zoo v2's prior: "
                                    "bench/results/guidance-zoo-v2)")
    verify_checksums: bool = True
    drain_timeout_s: float = Field(65.0, description="longest wait for in-flight work on SIGTERM")
    log_level: str = "info"
    api_keys: str = Field("", description="comma-separated API keys; empty with no file: no auth")
    api_keys_file: str | None = Field(None, description="file with one API key per line")
    open_paths: str = Field("/healthz,/readyz,/headroom,/metrics,/v2/health/live,/v2/health/ready",
                            description="paths open without an API key")
    cors_origins: str = Field("", description="comma-separated allowed CORS origins (empty: CORS off)")

    def model_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.model_dirs.split(",") if p.strip()]
