from bench.policy_sweep import policy_flags


def test_a_sweep_entry_is_a_policy_with_optional_serve_switches():
    assert policy_flags("fixed") == ["--policy", "fixed"]
    assert policy_flags("anytime+no-slack") == ["--policy", "anytime", "--no-slack"]


def test_a_sweep_entry_may_name_another_checkout_and_reports_never_show_its_path(tmp_path):
    from pathlib import Path

    import pytest

    from bench.checkouts import ROOT, Checkout, parse_checkouts, scrub, split_entry

    assert split_entry("base:anytime+no-slack") == ("base", "anytime+no-slack")
    assert split_entry("anytime") == (None, "anytime")
    base = Checkout("base", Path("/somewhere/else"), "18f1c91")
    assert scrub(f"--model-dirs {ROOT}/models/zoo/x --out /somewhere/else/r", {"base": base}) == \
        "--model-dirs ./models/zoo/x --out <base checkout>/r"
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_checkouts(["nameless"])
    with pytest.raises(ValueError, match="no .venv/bin/anytime"):
        parse_checkouts([f"empty={tmp_path}"])


def test_a_sweep_in_rounds_reports_each_rounds_ratio_beside_the_pooled_rows():
    from bench.policy_sweep import markdown, round_ratios

    def cell(policy, load, goodput, rnd=None):
        s = {"policy": policy, "load": load, "quality_goodput": goodput, "attainment_all": 1.0,
             "attainment_admitted": 1.0, "rejection_rate": 0.0, "latency_p50_ms": 10, "latency_p99_ms": 20,
             "mean_token_fraction": 0.5, "mean_quality": 0.8}
        return s if rnd is None else {**s, "round": rnd}

    res = {"capacity_samples_per_s": 100.0, "server_flags": [], "duration_s": 15, "deadlines": "x", "n_mix": "1:1",
           "rounds": 2, "checkouts": {},
           "runs": [cell("anytime", 1.0, 95.0), cell("other", 1.0, 100.0)],
           "round_runs": [cell("anytime", 1.0, 90.0, 0), cell("other", 1.0, 100.0, 0),
                          cell("other", 1.0, 100.0, 1), cell("anytime", 1.0, 100.0, 1)]}
    assert round_ratios(res, 1.0, "anytime", "other") == [0.9, 1.0]
    text = markdown(res)
    assert "| 1.0x | 0.95x |" in text  # the pooled cells' ratio
    assert "| 1.0x | 0.90 / 1.00 |" in text  # and each round's
    assert "in each of 2 rounds" in text
