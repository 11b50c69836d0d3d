"""Guidance priced against tokens: a `guidance: "auto"` request runs guided when the budget lets
the guided sample be the better one by the manifest's guided curves, unguided otherwise; the
response, the quality it reports and the metric say which."""
import json
import shutil
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.core.admission import Admission
from service.core.guidance_pricing import choose_guidance
from service.core.request import SamplingParams
from tests.utils.engine import make_engine
from tests.utils.server import running_server
from tests.utils.tiny_model import GUIDED_BASE_FD


def _make(engine, n=1, label=1, max_tokens=None):
    def make(w):
        return engine.new_request(n=n, seed=0, label=label, deadline_s=5.0, arrival=time.monotonic(), min_tokens=1,
                                  max_tokens=max_tokens or engine.spec.D, sampling=SamplingParams(), guidance=w)
    return make


@pytest.fixture(scope="module")
def engine(tiny_guided_model_dir):
    e = make_engine(tiny_guided_model_dir, max_batch=8)
    yield e
    e.stop(5)


def test_the_manifest_carries_guided_curves_on_one_scale(engine):
    card = engine.spec
    D = card.D
    # FD(D, w) = base(w): the best of the grid is guidance 1.5's, so its full length is 1
    assert card.quality(D, 1.5) == pytest.approx(1.0)
    assert card.quality(D, 0.0) == pytest.approx(GUIDED_BASE_FD[1.5] / GUIDED_BASE_FD[0.0])
    assert card.quality(D // 2, 1.5) == pytest.approx(1.0 / (1.0 + 30 * 0.25))
    assert card.quality(D, 0.75) == pytest.approx(0.75)  # between the measured guidance values, linear
    assert card.quality(D, 20.0) == pytest.approx(1.0)  # beyond the grid: its last curve
    assert card.quality(D) == pytest.approx(1.0)  # unlabelled: the manifest's own curve


def test_idle_the_guided_request_is_taken_after_one_probe_and_nothing_is_admitted(engine, monkeypatch):
    probes = []
    real = engine.probe
    monkeypatch.setattr(engine, "probe", lambda req: probes.append(req.guidance) or real(req))
    before = engine.scheduler.admitter.admitted_rows
    req = choose_guidance(engine, _make(engine, n=2), 1.5)
    assert req.guidance == 1.5 and req.n == 4 and probes == [1.5]
    assert engine.scheduler.admitter.admitted_rows == before


class Budgets:
    """Admission's answer per guidance for one made-up load: what a loaded engine would plan."""

    def __init__(self, engine, planned: dict[float, int | None], price: float = 0.0):
        self.spec, self.planned, self.asked, self.price = engine.spec, planned, [], price

    def token_price(self, priority):
        return self.price

    def probe(self, req):
        self.asked.append(req.guidance)
        k = self.planned[req.guidance]
        return Admission(True, planned_tokens=k) if k is not None else Admission(False, reason="deadline")


@pytest.mark.parametrize("guided_k, plain_k, chosen", [
    (8, 8, 1.5),  # the whole length either way: guidance is free quality
    (4, 8, 0.0),  # guided at half length (q 0.12) is worth less than unguided at full (q 0.5)
    (7, 8, 1.5),  # guided at 7 of 8 (q 0.68) still beats unguided at 8
    (None, 8, 0.0),  # the guided request would be refused, the plain one fits
    (None, None, 0.0),  # neither fits: the plain one meets its refusal (the likelier to fit)
    (2, None, 1.5),  # only the guided one fits (an odd load): take it
])
def test_under_load_the_better_sample_wins(engine, guided_k, plain_k, chosen):
    budgets = Budgets(engine, {1.5: guided_k, 0.0: plain_k})
    req = choose_guidance(budgets, _make(engine), 1.5)
    assert req.guidance == chosen
    assert budgets.asked == ([1.5] if guided_k == engine.spec.D else [1.5, 0.0])


@pytest.mark.parametrize("price, chosen", [
    (0.05, 1.5),  # guidance adds 0.5 at full length; its 8 extra row-steps cost 0.4
    (0.1, 0.0),  # the extra row-steps cost 0.8: another request buys more with them
])
def test_under_pressure_the_extra_rows_have_a_price(engine, price, chosen):
    budgets = Budgets(engine, {1.5: 8, 0.0: 8}, price)
    assert choose_guidance(budgets, _make(engine), 1.5).guidance == chosen
    assert budgets.asked == [1.5, 0.0]  # a price: both are weighed even at full length


def test_the_price_is_the_quality_caps(engine):
    sched = engine.scheduler
    sched.pressure = 0.5
    try:
        # the pressure decays while it is read (a half-life of seconds)
        assert engine.token_price() == pytest.approx(sched.budget.config.quality_price * 0.5 / engine.spec.D, rel=1e-3)
        assert engine.token_price("high") == pytest.approx(engine.token_price() / 2, rel=1e-3)
    finally:
        sched.pressure = 0.0


def test_a_request_capped_below_D_prices_at_its_cap(engine):
    budgets = Budgets(engine, {1.5: 3, 0.0: 3})
    assert choose_guidance(budgets, _make(engine, max_tokens=3), 1.5).guidance == 1.5
    assert budgets.asked == [1.5]  # the guided one got all the tokens it asked for


@pytest.fixture(scope="module")
def unhelpful_guidance_dir(tiny_guided_model_dir, tmp_path_factory):
    """The tiny guided model, measured as if guidance made samples worse at every k."""
    out = tmp_path_factory.mktemp("unhelpful") / "tiny-unhelpful"
    shutil.copytree(tiny_guided_model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["name"] = "tiny-unhelpful"
    q = manifest["prior"]["guidance"]["quality"]
    q["quality"] = [q["quality"][1], [0.9 * v for v in q["quality"][1]]]  # w = 0 gets the better curve
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def base(tiny_guided_model_dir, unhelpful_guidance_dir, tiny_model_dir):
    dirs = f"{tiny_guided_model_dir},{unhelpful_guidance_dir},{tiny_model_dir}"
    with running_server(model_dirs=dirs, default_model="tiny-guided", max_batch=16) as s:
        yield s[0]


def post(base, **body):
    return httpx.post(base + "/generate", json={"deadline_ms": 5000, "seed": 2, "label": "one", **body}, timeout=30)


def test_auto_runs_unguided_when_the_curves_say_guidance_does_not_pay(base):
    r = post(base, model="tiny-unhelpful", n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["guidance"] == 0.0 and body["tokens"] == 8
    assert body["quality"] == pytest.approx(1.0)  # w = 0's curve at full length, as the manifest says
    assert _unguided_samples(base, "tiny-unhelpful") == 2  # the metric counts the guidance chosen
    pinned = post(base, model="tiny-unhelpful", n=2, guidance=1.5).json()  # a pinned guidance is kept
    assert pinned["guidance"] == 1.5 and pinned["quality"] == pytest.approx(0.9)


def test_auto_runs_guided_when_it_pays_and_reports_the_guided_quality(base):
    body = post(base).json()
    assert body["guidance"] == 1.5 and body["tokens"] == 8 and body["quality"] == pytest.approx(1.0)
    plain = post(base, guidance=0).json()
    assert plain["quality"] == pytest.approx(0.5)
    unlabelled = post(base, label=None).json()  # nothing to guide: the manifest's own curve
    assert unlabelled["guidance"] == 0.0 and unlabelled["quality"] == pytest.approx(1.0)


def _unguided_samples(base, model) -> float:
    fam = {f.name: f for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)}["anytime_guidance"]
    return next(s.value for s in fam.samples if s.name == "anytime_guidance_bucket"
                and s.labels["model"] == model and float(s.labels["le"]) == 0.0)
