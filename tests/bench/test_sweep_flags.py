from bench.policy_sweep import policy_flags


def test_a_sweep_entry_is_a_policy_with_optional_serve_switches():
    assert policy_flags("fixed") == ["--policy", "fixed"]
    assert policy_flags("anytime+no-slack") == ["--policy", "anytime", "--no-slack"]
