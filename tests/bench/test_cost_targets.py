"""`anytime bench cost`: which measures it holds to issue 24's targets, from a run's medians,
and what it records of each server."""
from bench.cost import startup_choices, targets


def cell(total_per_request: float, n: int) -> dict:
    per_request = {"core": total_per_request * 0.9, "frontend": total_per_request * 0.1, "supervisor": 0.0,
                   "total": total_per_request}
    return {"cpu_ms_per_request": per_request, "cpu_ms_per_sample": {k: v / n for k, v in per_request.items()}}


def run_of(n1_half: float, n1_full: float, n64: float) -> dict:
    shapes = [("full n=1 json", 1, 64, n1_half), ("full n=1 json (full batch)", 1, 128, n1_full),
              ("full n=64 json", 64, 4, n64 * 64)]
    return {"servers": {"this": {}},
            "shapes": [{"shape": s, "n": n, "concurrency": c, "this": cell(v, n)} for s, n, c, v in shapes]}


def test_per_sample_target_is_held_at_a_full_batch_and_the_half_batch_is_only_reported():
    out = {t["measure"]: t for t in targets(run_of(n1_half=5.0, n1_full=4.5, n64=4.0))}
    full = out["full-length CPU per sample, n=1 (128 in flight) / n=64 (this)"]
    half = out["full-length CPU per sample, n=1 (64 in flight) / n=64 (this)"]
    assert abs(full["value"] - 1.125) < 1e-9 and full["met"] is True and full["target"] == "<= 1.15"
    assert abs(half["value"] - 1.25) < 1e-9 and half["met"] is None and half["target"] == ""


def test_per_sample_target_fails_above_the_bound():
    out = {t["measure"]: t for t in targets(run_of(n1_half=5.0, n1_full=4.8, n64=4.0))}
    assert out["full-length CPU per sample, n=1 (128 in flight) / n=64 (this)"]["met"] is False


def test_start_up_choices_are_read_from_the_server_log():
    log = "\n".join([
        '{"time":"t","level":"INFO","logger":"uvicorn.error","message":"Started server process [1]"}',
        "not json at all",
        '{"time":"t","level":"INFO","logger":"anytime.engine","message":"step threads chosen",'
        '"model":"fashion-mnist","one_thread_below":129}',
    ])
    assert startup_choices(log) == {"one_thread_below[fashion-mnist]": 129}
    assert startup_choices("") == {}
