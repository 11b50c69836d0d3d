"""The engine core: every model's engine, the scheduler that owns request state, runtimes,
latency model and metrics registry. Runs in its own process by default (service/core/process.py)."""
