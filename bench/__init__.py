"""Benchmarks: open-loop HTTP load, policy sweeps, engine micro-benchmarks."""
