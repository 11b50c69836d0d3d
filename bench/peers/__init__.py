"""The same exported model behind the servers users would pick instead of Anytime (LitServe, Ray
Serve, BentoML), each with its own batching, under the policy sweep's traffic (issue 15).

Needs the optional extra `peers` (pip install -e '.[peers]'); nothing here is part of the service."""
