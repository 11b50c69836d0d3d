"""bench/plan_validation.py: repeated measurements of one load are compared by their mean, and
the report shows each run beside it (one run's refusal rate at 2x varies several-fold)."""
from __future__ import annotations

import pytest

from bench.plan_validation import markdown, mean_of_runs


def run(refused: float, tokens: float, steps: int) -> dict:
    return {"requests": 100, "on_time": 1 - refused, "refused": refused, "errors": 0, "mean_tokens": tokens,
            "mean_quality": 0.5, "refusals_by_message": {},
            "runtime": {"steps": steps, "mean_batch": 10.0, "mean_step_ms": 1.0, "decodes": 5, "mean_decode_ms": 0.5,
                        "factor_step": 1.5, "factor_decode": 1.4, "margin_respond_ms": 6.0, "margin_jitter_ms": 3.0}}


def test_repeated_runs_are_averaged_and_each_is_reported():
    point = mean_of_runs([run(0.01, 20.0, 100), run(0.03, 22.0, 101)])
    assert point["refused"] == pytest.approx(0.02) and point["mean_tokens"] == pytest.approx(21.0)
    assert point["runtime"]["steps"] == 100 and point["runtime"]["mean_batch"] == 10.0  # rounded counts
    assert [r["refused"] for r in point["runs"]] == [0.01, 0.03]
    cal = {"source": "made up", "admit_s": 0.001, "respond_s": 0.001, "contention_s": 0.001, "jitter": 0.3,
           "respond_contention_s": 1e-5}
    sim = {**run(0.023, 21.0, 90), "runtime": {**run(0, 0, 90)["runtime"]}}
    report = markdown({"capacity_n1": 300.0, "duration_s": 20, "deadlines": "loguniform:50:1000", "n_mix": "1",
                       "seed": 0, "repeats": 2, "fit": {"seed": 1, "load": 1.5}, "calibration": cal,
                       "rows": [{"load": 2.0, "rate": 600.0, "measured": point, "simulated": sim}]})
    assert "| 2x | 600.0 | refusal rate | 2.00% (1.00%, 3.00%) | 2.30% | +15.0% | yes |" in report
    assert "mean of 2 runs" in report and "sigma 0.300" in report
