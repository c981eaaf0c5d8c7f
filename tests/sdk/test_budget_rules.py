"""The rules of ``LatencyModel.choose/observe`` on synthetic latencies: no wall clock, no runtime, exact outcomes.

Each test drives the model as a budgeted session does (``choose``, run, ``observe``) with latencies given by a
function of the call index and variant, so every outcome is deterministic. Names: ``acc`` is the most accurate
variant, ``fast`` the cheapest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.latency import Decision, LatencyModel, SortedWindow, check_budget, tail_key


def _model(profile: dict[str, tuple[float, float]], **kw) -> LatencyModel:
    """``profile``: id -> (p50, p95) in ms, most accurate first."""
    base = {v: {"p50_ms": p50, "p95_ms": p95} for v, (p50, p95) in profile.items()}
    return LatencyModel(list(profile), base, **kw)


def _drive(m: LatencyModel, budget: float, latency: Callable[[int, str], float], calls: int) -> list:
    """Run ``calls`` calls; returns (variant, probe, latency) per call."""
    seen = []
    for i in range(calls):
        d = m.choose(budget)
        ms = latency(i, d.variant)
        m.observe(d.variant, ms, budget, probe=d.probe)
        seen.append((d.variant, d.probe, ms))
    return seen


def _steady(**lat: float) -> Callable[[int, str], float]:
    return lambda i, v: lat[v]


def _first(seen: list, variant: str, start: int = 0) -> int:
    return next(i for i in range(start, len(seen)) if seen[i][0] == variant and not seen[i][1])


# ---------------------------------------------------------------------------------------------- window
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99, 0.0, 1.0])
def test_sorted_window_matches_numpy_quantiles_across_evictions(q):
    rng = np.random.default_rng(0)
    xs = rng.exponential(2.0, 300).round(2)  # rounding makes ties, which eviction must handle
    w = SortedWindow(32)
    for i, x in enumerate(xs):
        w.add(float(x))
        live = xs[max(0, i - 31):i + 1]
        assert len(w) == len(live)
        assert w.quantile(q) == pytest.approx(float(np.quantile(live, q)), abs=1e-12)
    w.clear()
    assert len(w) == 0
    with pytest.raises(ValueError, match="^window size must be >= 1"):
        SortedWindow(0)
    one = SortedWindow(1)  # the smallest window keeps the latest value
    for x in (3.0, 1.0):
        one.add(x)
    assert len(one) == 1 and one.quantile(0.5) == one.quantile(0.99) == 1.0


def test_tail_key_and_argument_checks():
    assert [tail_key(q) for q in (0.5, 0.8, 0.9, 0.95, 0.97, 0.99)] == \
        ["p50_ms", "p90_ms", "p90_ms", "p95_ms", "p95_ms", "p99_ms"]
    with pytest.raises(ValueError, match="^LatencyModel needs at least one variant$"):
        _model({})
    for q in (0.4, 1.0):
        with pytest.raises(ValueError, match=r"^quantile must be in \[0.5, 1\)"):
            _model({"a": (1, 1)}, quantile=q)
    assert _model({"a": (1, 1)}, quantile=0.5).quantile == 0.5  # the median is the smallest tail allowed


def test_check_budget():
    with pytest.raises(InputError, match="^budget_ms must be"):
        check_budget(-3)
    assert Decision("a", 1.0, True).probe is False
    assert check_budget(2) == 2.0 and isinstance(check_budget(2), float) and check_budget(0.25) == 0.25
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5", None):
        with pytest.raises(InputError, match="^deadline must be a .*number of milliseconds > 0"):
            check_budget(bad, "deadline")


# ---------------------------------------------------------------------------------------------- prediction
def test_prediction_of_the_variant_in_use_is_its_own_tail_quantile():
    m = _model({"acc": (5.0, 6.0), "fast": (1.0, 1.5)})
    assert m.predict("acc") == pytest.approx(5.0 + 0.5)  # profile median + the smallest profiled tail excess
    samples = [float(x) for x in range(1, 21)]
    budget = 100.0
    for x in samples:
        d = m.choose(budget)
        assert d.variant == "acc" and not d.probe
        m.observe("acc", x, budget)
    assert m.predict("acc") == pytest.approx(float(np.quantile(samples, 0.95)))  # 19.05, not the median 10.5
    # another variant: profile median x load factor x correction, plus the tail excess of the variant in use
    load = float(np.median([x / 5.0 for x in samples[-8:]]))
    excess = float(np.quantile(samples, 0.95) - np.median(samples))
    assert m.load_factor() == pytest.approx(load)
    assert m.predict("fast") == pytest.approx(1.0 * load + min(excess, 1.0 * load))


def test_before_min_samples_the_variant_in_use_is_judged_on_profile_and_median():
    m = _model({"acc": (5.0, 5.0), "fast": (1.0, 1.0)}, min_samples=4)
    m.choose(100.0)
    m.observe("acc", 40.0, 100.0)  # one slow sample: its median (40) dominates the scaled profile
    assert m.predict("acc") == pytest.approx(40.0)
    assert m.jitter() == 0.0  # not enough samples for an excess of its own: the profile's (0 here)


# ---------------------------------------------------------------------------------------------- choice
def test_generous_budget_runs_the_most_accurate_variant():
    m = _model({"acc": (5.0, 6.0), "mid": (3.0, 3.5), "fast": (1.0, 1.2)})
    seen = _drive(m, 50.0, _steady(acc=5.0, mid=3.0, fast=1.0), 200)
    assert all(v == "acc" for v, probe, _ in seen if not probe)
    assert m.switches == 0


def test_budget_picks_the_most_accurate_variant_that_fits():
    m = _model({"acc": (5.0, 6.0), "mid": (3.0, 3.5), "fast": (1.0, 1.2)})
    d = m.choose(4.0)
    assert (d.variant, d.fits) == ("mid", True)
    assert d.predicted_ms == pytest.approx(3.0 + 0.2)


def test_nothing_fits_runs_the_fastest_by_prediction():
    m = _model({"acc": (5.0, 6.0), "fast": (1.0, 1.2)})
    d = m.choose(0.5)
    assert (d.variant, d.fits) == ("fast", False)


def test_the_tail_not_the_median_decides():
    """Every 8th call of acc takes 12 ms, the rest 5 ms: median 5 fits a 10 ms budget, the p95 (12) does not."""
    m = _model({"acc": (5.0, 5.5), "fast": (1.0, 1.1)})
    seen = _drive(m, 10.0, lambda i, v: (12.0 if i % 8 == 7 else 5.0) if v == "acc" else 1.0, 40)
    # after the second slow sample (call 15) the p95 of 16 samples is 12 > 10: move down (no two misses in a row)
    assert m.predictions()["acc"] > 10.0 and [v for v, _, _ in seen[:16]] == ["acc"] * 16
    assert seen[16][0] == "fast"


def test_two_misses_in_a_row_move_down_even_when_the_tail_fits():
    m = _model({"acc": (5.0, 5.5), "fast": (1.0, 1.1)}, window=32)
    # 30 calls at 5 ms, then two at 12 ms: the p95 of 32 samples is still <= 10, but two misses in a row
    seen = _drive(m, 10.0, lambda i, v: (12.0 if i in (30, 31) else 5.0) if v == "acc" else 1.0, 33)
    assert m.windows["fast"].last_call == 32 and seen[32][0] == "fast"
    assert [v for v, _, _ in seen[:32]] == ["acc"] * 32


def test_upgrade_needs_the_margin():
    """acc predicted at 9 ms: it fits 10 ms, but not 10 x (1 - 0.15) = 8.5 ms, so the model never moves back up."""
    m = _model({"acc": (9.0, 9.0), "fast": (1.0, 1.0)}, margin=0.15, dwell=5, probe_every=10)
    seen = _drive(m, 10.0, lambda i, v: 30.0 if i == 0 else {"acc": 9.0, "fast": 1.0}[v], 300)
    assert seen[0][0] == "acc" and all(v == "fast" for v, _, _ in seen[1:])  # no upgrade, no probe of acc
    assert m.switches == 1 and m.probes == 0


def test_upgrade_waits_for_the_dwell():
    """A transient slow call sends acc down; it comes back exactly when the dwell has passed, not before."""
    m = _model({"acc": (8.0, 8.0), "fast": (1.0, 1.0)}, dwell=20, probe_every=0)
    seen = _drive(m, 10.0, lambda i, v: 30.0 if i == 0 else {"acc": 8.0, "fast": 1.0}[v], 60)
    down = _first(seen, "fast")
    up = _first(seen, "acc", down)
    assert down == 1 and up == down + 20
    assert m.switches == 2


def test_a_failed_upgrade_doubles_the_dwell_and_a_stable_run_forgets_it():
    m = _model({"acc": (8.0, 8.0), "fast": (1.0, 1.0)}, dwell=10, probe_every=0)
    slow = {0, 15, 16}  # acc's first call, and acc soon after it came back (at call 11)
    seen = _drive(m, 10.0, lambda i, v: 30.0 if v == "acc" and i in slow else {"acc": 8.0, "fast": 1.0}[v], 200)
    up1 = _first(seen, "acc", 1)
    down2 = _first(seen, "fast", up1)
    assert (up1, down2) == (11, 16)
    assert _first(seen, "acc", down2) == down2 + 20  # dwell doubled: 10 -> 20
    assert m.switches == 4 and m.dwell == 10  # back to the base dwell after 4 dwells without a change


def test_similar_speed_variants_do_not_flap():
    """Two variants of equal speed under spikes: moving between them cannot help, so the model stays."""
    rng = np.random.default_rng(0)
    spikes = rng.random(2000) < 0.04  # 4% of calls take 3 ms instead of 1 ms, sometimes two in a row
    lat = lambda i, v: 3.0 if spikes[i] else (1.0 if v == "acc" else 0.97)  # noqa: E731
    prof = {"acc": (1.0, 1.1), "twin": (0.97, 1.07)}
    m = _model(prof, dwell=20)
    seen = _drive(m, 2.5, lat, 2000)
    assert m.switches == 0 and sum(v == "acc" for v, _, _ in seen) >= 1900
    flappy = _model(prof, dwell=20, hysteresis=0.0)  # the same run without hysteresis does switch
    _drive(flappy, 2.5, lat, 2000)
    assert flappy.switches >= 10


def test_a_faster_variant_beyond_the_noise_is_taken():
    m = _model({"acc": (1.0, 1.1), "fast": (0.5, 0.55)}, dwell=20)
    seen = _drive(m, 2.5, lambda i, v: (3.0 if i in (5, 6) else 1.0) if v == "acc" else 0.5, 8)
    assert seen[7][0] == "fast"


# ---------------------------------------------------------------------------------------------- adaptation
def test_device_slowdown_moves_down_and_recovery_moves_up():
    m = _model({"acc": (4.0, 4.4), "mid": (2.0, 2.2), "fast": (1.0, 1.1)}, dwell=10, probe_every=25)
    slow = lambda i: 3.0 if 100 <= i < 300 else 1.0  # noqa: E731
    base = {"acc": 4.0, "mid": 2.0, "fast": 1.0}
    seen = _drive(m, 8.0, lambda i, v: base[v] * slow(i), 500)
    used = lambda a, b: {v for v, probe, _ in seen[a:b] if not probe}  # noqa: E731
    assert used(0, 100) == {"acc"}
    assert used(110, 300) == {"mid"}  # 3x slower: acc 12 ms misses 8 ms, mid 6 ms fits
    assert used(330, 500) == {"acc"}
    misses = sum(ms > 8.0 for _, _, ms in seen)
    assert misses <= 6  # the few calls that saw the change first


def test_probes_run_the_stalest_other_variant_and_do_not_count_for_the_dwell():
    m = _model({"acc": (4.0, 4.4), "mid": (2.0, 2.2), "fast": (1.0, 1.1)}, probe_every=10)
    seen = _drive(m, 3.0, _steady(acc=4.0, mid=2.0, fast=1.0), 41)
    probes = [(i, v) for i, (v, p, _) in enumerate(seen) if p]
    # probes at calls 10, 20, 30, 40; acc predicted 4.x > 3 x 0.85 is never probed; fast is the only candidate
    assert probes == [(10, "fast"), (20, "fast"), (30, "fast"), (40, "fast")]
    assert m.probes == 4 and m.current == "mid" and m._since_switch == 41 - 4
    assert m.windows["fast"].last_call == 40


def test_a_probe_teaches_the_variant_its_correction():
    """fast runs 3x slower than the load factor predicts: one probe raises its prediction at once."""
    m = _model({"acc": (4.0, 4.0), "fast": (1.0, 1.0)}, probe_every=10)
    _drive(m, 5.0, lambda i, v: 4.0 if v == "acc" else 3.0, 11)
    assert m.probes == 1
    assert m.correction("fast") == pytest.approx(3.0, rel=0.01)
    assert m.predict("fast") == pytest.approx(3.0, rel=0.01)
    # a faster run moves the correction only halfway (learn_rate 0.5)
    m.observe("fast", 1.0, 5.0, probe=True)
    assert m.log_corr["fast"] == pytest.approx(0.5 * np.log(3.0), rel=0.02)


def test_a_correction_fades_by_one_step_per_call_whichever_variant_runs():
    """Corrections fade back towards 1 by ``1 - 1/(2 horizon)`` per call, also while other variants run."""
    m = _model({"acc": (4.0, 4.0), "fast": (1.0, 1.0)}, probe_every=10, horizon=50)
    _drive(m, 5.0, lambda i, v: 4.0 if v == "acc" else 3.0, 11)  # call 10 probes fast: 3x slower than thought
    learned = m.log_corr["fast"]
    for _ in range(7):
        m.observe("acc", 4.0, 5.0)
    faded = learned * (1 - 1 / 100) ** 7
    assert m.log_corr["fast"] == pytest.approx(faded, rel=1e-12) and m.log_corr["acc"] == 0.0
    assert m.correction("fast") == pytest.approx(np.exp(faded), rel=1e-12) and m.correction("acc") == 1.0


def test_a_probe_that_met_a_heavier_input_first_is_not_counted_twice():
    """The input becomes 100x heavier on call 20, which happens to be a probe of fast: fast learns a 100x correction
    at load 1. When acc then shows the device-wide factor of 100, fast's slowdown is explained by it, not 100 x 100."""
    m = _model({"acc": (1.0, 1.0), "fast": (0.1, 0.1)}, probe_every=20, dwell=5)
    base = {"acc": 1.0, "fast": 0.1}
    seen = _drive(m, 50.0, lambda i, v: base[v] * (100.0 if i >= 20 else 1.0), 40)
    assert seen[20] == ("fast", True, 10.0)
    assert m.correction("fast") == pytest.approx(1.0)  # the load factor (100) explains it all now
    assert m.predict("fast") <= 50.0 and [v for v, _, _ in seen[-10:]] == ["fast"] * 10
