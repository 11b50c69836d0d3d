import json

import pytest

from bench.model.evaluation_merge import main, merge


def run(name: str, fd: float, date: str) -> dict:
    curve = [{"k": k, "fraction": k / 4, "frechet": fd / k, "mse": 0.1 / k, "label_accuracy": 0.5,
              "label_accuracy_cold": 0.6, "reconstruction_accuracy": 0.7} for k in (1, 2, 3, 4)]
    return {"command": f"anytime evaluate --pipeline {name}", "date": date, "machine": "x", "dataset": "d",
            "classifier_test_accuracy": 0.9, "modality": "image", "test_samples": 10,
            "pipelines": {name: {"curve": curve, "unconditional_samples": 5, "figures": [f"samples-{name}.png"]}}}


def test_merge_keeps_every_pipeline_in_order_and_both_commands():
    merged = merge([run("ordered", 10.0, "d1"), run("plain", 20.0, "d2")])
    assert list(merged["pipelines"]) == ["ordered", "plain"]
    assert merged["pipelines"]["plain"]["curve"][0]["frechet"] == 20.0
    assert "--pipeline ordered" in merged["command"] and "--pipeline plain" in merged["command"]


def test_merge_refuses_a_pipeline_twice():
    with pytest.raises(ValueError, match="ordered"):
        merge([run("ordered", 10.0, "d1"), run("ordered", 20.0, "d2")])


def test_main_writes_the_joint_report_and_copies_the_figures(tmp_path):
    for name, fd in (("ordered", 10.0), ("plain", 20.0)):
        d = tmp_path / name
        d.mkdir()
        (d / "evaluation.json").write_text(json.dumps(run(name, fd, "today")))
        (d / f"samples-{name}.png").write_bytes(b"png")
    out = tmp_path / "out"
    assert main([str(tmp_path / "ordered"), str(tmp_path / "plain"), "--out", str(out)]) == 0
    text = (out / "evaluation.md").read_text()
    assert "FD ordered" in text and "FD plain" in text and "Claims checked" in text
    assert (out / "samples-plain.png").read_bytes() == b"png" and (out / "anytime-curve.png").exists()
    assert "bench.model.evaluation_merge" in json.loads((out / "evaluation.json").read_text())["command"]
