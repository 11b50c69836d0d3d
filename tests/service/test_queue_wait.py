"""Admission learns how much later than estimated queued requests get a row, and refuses a
queued request that such a wait would leave without a token."""
import dataclasses
import math

import pytest

from service.core.queue_wait import MIN_STARTS, QueueWaitError

from .test_scheduler import D, request, scheduler


def test_the_error_is_a_high_quantile_of_queued_starts_only():
    e = QueueWaitError()
    e.observe(math.nan, 5.0)  # rows were free at admission: nothing was estimated
    assert e.seconds == 0.0
    for i in range(MIN_STARTS - 1):
        e.observe(10.0, 10.0 + 0.001 * (i % 10))
    assert e.seconds == 0.0  # too few starts yet: admission trusts its estimate
    for i in range(200):
        e.observe(10.0, 10.0 + (0.050 if i % 50 == 0 else 0.001 * (i % 10)))
    assert e.seconds == pytest.approx(0.050)  # the p99 catches the rare long waits
    for _ in range(600):
        e.observe(10.0, 9.99)  # they started sooner than estimated
    assert e.seconds == 0.0  # never below zero


def test_a_queued_request_is_refused_when_the_usual_error_leaves_it_nothing():
    s = scheduler(max_batch=64)
    tight = request(20)
    # a full batch: it must wait for rows; by the estimate one token still fits
    assert s.admit(tight, 100.0, running=64, waiting=0).ok
    s.load = dataclasses.replace(s.load, queue_wait_error=0.015)
    adm = s.admit(request(20), 100.0, running=64, waiting=0)
    assert not adm.ok and adm.reason == "deadline"
    # with rows free the wait is not an estimate of rows freeing: the error does not apply
    assert s.admit(request(20), 100.0, running=32, waiting=0).ok
    # a request with time to spare is admitted as before
    assert s.admit(request(200), 100.0, running=64, waiting=0).ok


def test_admission_says_when_a_queued_request_should_start():
    s = scheduler(max_batch=64)
    queued = s.admit(request(200), 100.0, running=64, waiting=0)
    free = s.admit(request(200), 100.0, running=8, waiting=0)
    assert queued.start_by > 100.0 and math.isnan(free.start_by)


def test_only_requests_whose_deadline_binds_are_learned_from():
    s = scheduler(max_batch=64)
    # due in seconds: it has time to spare and is passed by arrivals due sooner, by design
    spare = s.admit(request(20_000), 100.0, running=64, waiting=0)
    assert spare.ok and spare.planned_tokens == D and math.isnan(spare.start_by)
    # due soon, in a full batch: its deadline binds its tokens, so a late start is an error
    tight = s.admit(request(60), 100.0, running=64, waiting=0)
    assert tight.ok and tight.planned_tokens < D and tight.start_by > 100.0
