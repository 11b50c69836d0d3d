"""The autoscaling signal's accounting: what an idle replica would have given a request
(Admission.idle_tokens), what load took from it when it ended (engine_core._load_lost), and the
counters they feed, read back through prometheus_client's parser."""
from prometheus_client.parser import text_string_to_metric_families

from service.core.engine_core import _load_lost
from service.core.metrics import Metrics
from service.core.request import FinishReason, Status
from tests.service.test_scheduler import D, request, scheduler


def test_an_idle_admission_loses_nothing():
    adm = scheduler().admit(request(20), 100.0, running=0, waiting=0)
    assert adm.ok and adm.idle_tokens == adm.planned_tokens == 17


def test_load_takes_tokens_an_idle_replica_would_give():
    s = scheduler()
    idle = s.admit(request(100), 100.0, running=0, waiting=0)
    busy = scheduler().admit(request(100), 100.0, running=63, waiting=0)
    assert busy.ok and busy.planned_tokens < busy.idle_tokens
    assert abs(busy.idle_tokens - idle.planned_tokens) <= 1  # the same deadline, judged idle
    assert scheduler().admit(request(1000, max_tokens=10), 100.0, 63, 0).idle_tokens == 10


def test_a_deadline_too_tight_even_when_idle_is_not_a_load_refusal():
    adm = scheduler().admit(request(3), 100.0, running=0, waiting=0)
    assert not adm.ok and adm.reason == "deadline" and adm.idle_tokens == 0


def test_a_full_queue_refuses_what_an_idle_replica_would_admit():
    adm = scheduler(max_queue=4).admit(request(1000, n=5), 100.0, running=0, waiting=0)
    assert not adm.ok and adm.reason == "queue_full" and adm.idle_tokens == D


def test_what_load_took_when_a_request_ends():
    def ended(reason, tokens, idle=10, status=0):
        r = request(100, tokens=tokens)
        r.idle_tokens, r.status, r.finish_reason, r.error_status = idle, Status.FINISHED, reason, status
        return _load_lost(r)

    assert ended(FinishReason.BUDGET, 10) == 0
    assert ended(FinishReason.BUDGET, 4) == 6  # a budget cut when it started behind busy rows
    assert ended(FinishReason.DEADLINE_GUARD, 7) == 3
    assert ended(FinishReason.QUALITY, 5) == 5
    assert ended(FinishReason.BUDGET, 12) == 0  # more than the idle plan: no negative loss
    assert ended(FinishReason.ERROR, 0, status=503) == 10  # expired in the queue
    assert ended(FinishReason.ERROR, 3, status=500) == 0  # the runtime failed: not load
    assert ended(FinishReason.CANCELLED, 2) == 0


def test_counters():
    m = Metrics()
    m.admission("m", 2, 10, 0)  # admitted (n=2): 20 idle tokens, loss counted later
    m.admission("m", 2, 0, 3, "")  # it ended 3 tokens short per sample
    m.admission("m", 1, 8, 8, "queue_full")  # a load refusal
    m.admission("m", 1, 0, 0, "deadline")  # too tight even when idle: nothing
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(m.exposition()[0].decode()) for s in f.samples}
    assert values[("anytime_idle_tokens_total", (("model", "m"),))] == 28
    assert values[("anytime_load_lost_tokens_total", (("model", "m"),))] == 14
    assert values[("anytime_load_refusals_total", (("model", "m"), ("reason", "queue_full")))] == 1
    assert ("anytime_load_refusals_total", (("model", "m"), ("reason", "deadline"))) not in values
