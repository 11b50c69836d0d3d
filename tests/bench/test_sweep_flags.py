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
