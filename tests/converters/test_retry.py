"""The accuracy-aware retry's search: how many nodes it keeps, and when it gives up."""

from __future__ import annotations

from edgekit.converters.accuracy import retry

RANKED = [f"n{i}" for i in range(32)]


def test_retry_doubles_until_it_passes():
    seen = []

    def attempt(kept):
        seen.append(len(kept))
        return {"passed": len(kept) >= 3, "cosine": 0.9 + 0.01 * len(kept), "top1": None}

    m, kept = retry(RANKED, attempt)
    assert seen == [1, 2, 4] and kept == RANKED[:4] and m["passed"]


def test_retry_stops_when_keeping_nodes_brings_nothing():
    seen = []

    def attempt(kept):
        seen.append(len(kept))
        return {"passed": False, "cosine": 0.95, "top1": 0.9}     # same as the plain variant, whatever is kept

    base = {"passed": False, "cosine": 0.95, "top1": 0.9}
    retry(RANKED, attempt, baseline=base, patience=2)
    assert seen == [1, 2]                                 # two attempts without gain, then stop
    seen.clear()
    retry(RANKED, attempt)                                # without a baseline: up to max_tries
    assert seen == [1, 2, 4, 8, 16]


def test_retry_goes_on_while_it_gains():
    seen = []

    def attempt(kept):
        seen.append(len(kept))
        return {"passed": len(kept) >= 16, "cosine": 0.95, "top1": 0.8 + 0.01 * len(kept)}

    m, kept = retry(RANKED, attempt, baseline={"cosine": 0.95, "top1": 0.8}, patience=2)
    assert seen == [1, 2, 4, 8, 16] and m["passed"]


def test_retry_starts_no_attempt_predicted_to_end_past_its_budget():
    """Each attempt is taken to cost as much as the slowest so far (first: the plain build's cost): a budget of
    1 s with 0.4 s attempts allows two (the third would end at ~1.2 s); a plain build of 2 s allows none."""
    import time

    seen = []

    def attempt(kept):
        seen.append(len(kept))
        time.sleep(0.4)
        return {"passed": False, "cosine": 0.9 + 0.01 * len(kept), "top1": None}

    retry(RANKED, attempt, time_budget_s=1.0)
    assert seen == [1, 2]
    seen.clear()
    m, kept = retry(RANKED, attempt, time_budget_s=1.0, attempt_cost_s=2.0)
    assert seen == [] and m == {} and kept == []
