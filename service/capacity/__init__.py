"""`anytime plan`: how many replicas a traffic needs. A discrete-event simulation of one replica's
engine loop on a simulated clock, driving the real scheduler (service/core: Admitter, Budget,
Planner, Lifecycle, the policy objects) over a measured latency model; docs/scaling-out.md.

- traffic: the request mix (rate, deadline distribution, n mix) and its Poisson arrivals;
- calibration: a replica's measured costs (from a running server, or profiled here), as JSON;
- gpu: a projected calibration for a GPU from the step's roofline (a projection, not a measurement);
- replica: the simulated replica;
- fleet: replica counts swept, the replicas needed for a quality floor;
- report: markdown, JSON and the plot; cli: the command.
"""
