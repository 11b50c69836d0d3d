"""Anytime's benchmarks, behind `anytime bench NAME` (bench/cli.py; `anytime bench --help`).

- The product's benchmarks, one module per command: engine (engine_bench), load (load_bench),
  sweep (policy_sweep), mixed, interactive, priority, overhead, cost, oip (oip_cost), tracing,
  soak, chaos, threads (thread_modes), split, split-sweep (split_sweep), guidance (guidance_sweep),
  fleet (replicas behind HAProxy, routed on headroom against round robin), plan (plan_validation:
  `anytime plan`'s predictions against a measured replica), peers (peers/: the same model behind
  LitServe, Ray Serve and
  BentoML).
- The layer they share: server_proc (a real `anytime serve` process, ready or failed with its
  log), loadgen (open-loop arrivals from a light aiohttp client), summary and tables (what a run
  measured, as numbers and markdown), machine (the header every report starts with: command,
  commit, date, machine), checkouts (servers of other commits, side by side in one run), fleet_proc (replicas
  and Debian's HAProxy in front of them).
- model/: checks of a trained model that the Makefile's model pipelines run.
- gpu_check: `make gpu-check`.
- results/: every run's report, with the command, commit, date and machine that produced it.
  One-off investigations live there as results; their scripts are removed once the results are
  committed (each report names the commit that still has its script).
"""
