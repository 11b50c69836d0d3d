"""Zoo v3's recipe and gate: a smoke run stays in its own folder and is never installed; the real
recipe trains at nice 19 and installs only when every target is measured and met."""
import json
import subprocess
from pathlib import Path

import pytest

from bench.model import zoo_v3_targets

ROOT = Path(__file__).resolve().parent.parent.parent


def dry_run(*flags: str) -> list[str]:
    """The commands `make zoo-v3-steps` would run, every target out of date (-B), whatever
    runs/ holds."""
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "zoo-v3-steps", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.replace("\\\n", " ").splitlines()


def test_smoke_run_is_small_stays_in_its_folder_and_never_installs():
    lines = dry_run("V3_SMOKE=1")
    trains = [line for line in lines if " train " in line]
    # feature classifier, ordered decoder (then its fine-tuning stages, one loop line), prior, plain decoder
    assert len(trains) == 5
    assert all("--steps-per-epoch 2 --limit 512" in line and "nice -n 19" in line for line in trains)
    outs = [line.split("--out ")[1].split()[0] for line in lines if "--out " in line]
    assert outs and all(o.startswith("runs/fashion-mnist-v3-smoke") for o in outs), outs
    assert not any("cp -r" in line or "rm -rf" in line for line in lines)
    assert any("never replaces the default zoo" in line for line in lines)


def test_real_recipe_trains_everything_and_installs_only_through_the_gate():
    lines = dry_run()
    trains = [line for line in lines if " train " in line]
    assert len(trains) == 5 and not any("--steps-per-epoch" in line or "--limit" in line for line in trains)
    assert all("nice -n 19" in line for line in trains)
    decoder = next(line for line in trains if "--init-decoder" in line)
    stages = next(line for line in trains if "for stage in 12:1e-4:0.2 16:1e-4:0.5" in line)
    assert "--feature-weight $3" in stages and "--out runs/fashion-mnist-v3/vqvae_ordered.pt" in stages
    assert "--feature-classifier runs/fashion-mnist-v3/feature_classifier.pt" in decoder
    prior = next(line for line in trains if " train prior" in line)
    assert "--label-dropout 0.15" in prior and "--init runs/fashion-mnist-v3/v2_prior.pt" in prior
    assert any("--guidance 0.5,1,1.5,2,3,4" in line for line in lines)
    install = next(line for line in lines if "zoo_v3_targets --met" in line)
    assert "cp -r runs/fashion-mnist-v3/export/fashion-mnist models/zoo/fashion-mnist" in install


def _evaluation(acc: float, fd: float, recon: float, guided: bool = True) -> dict:
    curve = [{"k": k, "fraction": k / 64, "frechet": fd * (1 + (64 - k) / 640), "label_accuracy": acc}
             for k in (13, 38, 51, 64)]
    res = {"curve": [dict(r, reconstruction_accuracy=recon) for r in curve]}
    if guided:
        res["guided"] = [{"guidance": 1.5, "samples": 100, "curve": curve}]
    return {"pipelines": {"ordered": res}}


def test_model_claims_need_the_measurement_at_the_default_guidance():
    met = zoo_v3_targets.model_claims(_evaluation(0.9, 14.0, 0.87), 1.5)
    assert [ok for *_, ok in met] == [True, True, True, True, True]
    missed = zoo_v3_targets.model_claims(_evaluation(0.85, 16.0, 0.8), 1.5)
    assert [ok for *_, ok in missed] == [False, False, True, True, False]
    unmeasured = zoo_v3_targets.model_claims(_evaluation(0.9, 14.0, 0.87), 2.0)  # no curve at 2.0
    assert [ok for *_, ok in unmeasured][:2] == [None, None]


@pytest.mark.parametrize("all_met, status", [(True, 0), (False, 1)])
def test_gate_exit_status(tmp_path, all_met, status):
    f = tmp_path / "targets.json"
    f.write_text(json.dumps({"all_met": all_met, "claims": []}))
    assert zoo_v3_targets.main(["--met", str(f)]) == status
