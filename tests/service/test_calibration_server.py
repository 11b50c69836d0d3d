"""`anytime plan --server`'s calibration measured through the API of a real replica: the sizes it
asks for, a full batch above the API's n sent as requests the engine steps together, and the
replica's frontend workers read from its /metrics."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.server_proc import serve
from service.capacity.calibration import API_MAX_N, from_server


def batch_buckets(url: str) -> dict[float, float]:
    """Cumulative counts of anytime_batch_size by upper bound."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "anytime_batch_size_bucket":
                out[float(s.labels["le"])] = out.get(float(s.labels["le"]), 0.0) + s.value
    return out


def test_a_replica_is_calibrated_through_its_api_with_a_full_batch(tiny_model_dir, tmp_path):
    with serve("--model-dirs", str(tiny_model_dir), "--workers", "2", "--no-standby-worker",
               log_path=tmp_path / "server.log") as url:
        before = batch_buckets(url)
        cal = from_server(url, sizes=(1, 8, 2 * API_MAX_N), repeats=2)
        after = batch_buckets(url)
    assert sorted(cal.step_s) == sorted(cal.decode_s) == [1, 8, 2 * API_MAX_N]
    assert all(c > 0 for c in [*cal.step_s.values(), *cal.decode_s.values(), cal.admit_s])
    assert cal.frontend_workers == 2
    # the two requests of 64 rows stepped together: steps of more than 64 rows were taken
    above = {le: after[le] - before.get(le, 0.0) for le in after}
    bounds = sorted(above)
    at_most_64 = above[min(b for b in bounds if b >= API_MAX_N)]
    assert above[float("inf")] - at_most_64 > 0, above
