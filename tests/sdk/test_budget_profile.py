"""The per-device latency profile of a bundle: measured on first use, cached, re-measured on change."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import budget_fixtures  # noqa: E402

import edgekit  # noqa: E402
from edgekit.profile_cache import ProfileCache, cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return budget_fixtures.mlp_bundle(tmp_path_factory.mktemp("prof") / "mlp.bundle", hidden=512)


def test_cache_folder_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edgekit" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "edgekit" / "profiles"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "profiles"


def test_profile_is_measured_once_and_reused(bundle, tmp_path, monkeypatch):
    from edgekit import profile_cache

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    # this test is about reuse: every measurement counts as stable here, however busy the machine (stability is
    # tested in test_an_unstable_variant_is_measured_again_and_not_cached)
    monkeypatch.setattr(profile_cache, "STABLE", dict.fromkeys(profile_cache.STABLE, float("inf")))
    s1 = edgekit.load(bundle, budget_ms=50, threads=1)
    assert sorted(s1.profile_cache.measured) == ["fp32", "pruned"]
    files = list((tmp_path / "profiles").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert set(data["variants"]) == {"fp32", "pruned"} and data["device"]["cores"] >= 1
    for row in data["variants"].values():
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["runs"] >= 5
    # the wide variant does ~8x the work of the pruned one: its profile must say it is slower
    assert data["variants"]["fp32"]["p50_ms"] > data["variants"]["pruned"]["p50_ms"]
    mtime = files[0].stat().st_mtime_ns

    s2 = edgekit.load(bundle, budget_ms=50, threads=1)
    assert s2.profile_cache.measured == [] and s2.profile == s1.profile
    assert files[0].stat().st_mtime_ns == mtime
    assert s2._sessions == {}  # with a cached profile, nothing is loaded before the first run
    s2.run(budget_fixtures.np.zeros((2, 256), budget_fixtures.np.float32))
    assert list(s2._sessions) == [s2.last_run["variant"]]


def test_profile_is_remeasured_when_device_or_bundle_changes(bundle, tmp_path, monkeypatch):
    from edgekit import profile_cache

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profile_cache, "STABLE", dict.fromkeys(profile_cache.STABLE, float("inf")))
    edgekit.load(bundle, budget_ms=50, threads=1)
    # other run options (thread count) are another device configuration
    s = edgekit.load(bundle, budget_ms=50, threads=2)
    assert sorted(s.profile_cache.measured) == ["fp32", "pruned"]
    # another bundle (different weights, so different artifact hashes in the manifest)
    other = budget_fixtures.mlp_bundle(tmp_path / "other.bundle", hidden=512, seed=1)
    s = edgekit.load(other, budget_ms=50, threads=1)
    assert sorted(s.profile_cache.measured) == ["fp32", "pruned"]
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 3


def test_a_changed_device_fingerprint_invalidates(bundle, tmp_path):
    b = edgekit.Bundle(bundle)
    pc = ProfileCache(b, {"threads": 1}, root=tmp_path)
    pc.save({"fp32": {"p50_ms": 1.0}, "pruned": {"p50_ms": 0.1}})
    assert set(pc.load()) == {"fp32", "pruned"}
    data = json.loads(pc.path.read_text())
    data["device_hash"] = "0" * 64  # the file found under this key was written for another device
    pc.path.write_text(json.dumps(data))
    assert pc.load() == {}
    pc.path.write_text("{not json")  # a corrupt cache file is re-measured, never an error
    assert pc.load() == {}
    calls = []
    got = pc.get(["fp32"], lambda vids: calls.append(vids) or {v: {"p50_ms": 2.0} for v in vids})
    assert calls == [["fp32"]] and got == {"fp32": {"p50_ms": 2.0}}


def test_explicit_profile_skips_measuring(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    prof = {"fp32": {"p50_ms": 5.0, "p95_ms": 6.0}, "pruned": {"p50_ms": 0.5, "p95_ms": 0.6}}
    s = edgekit.load(bundle, budget_ms=3, profile=prof)
    assert s.variant == "pruned" and s.profile_cache is None
    assert not (tmp_path / "profiles").exists()
    with pytest.raises(edgekit.InputError, match="profile"):
        edgekit.load(bundle, budget_ms=3, profile="sometimes")


def test_stability_figures_and_threshold():
    from edgekit.profile_cache import STABLE, is_stable, stability

    flat = budget_fixtures.np.array([10.0] * 98 + [10.5, 11.0])
    st = stability(flat)
    # p99 interpolates between the two largest samples: 10.5 + 0.01 x 0.5 = 10.505
    assert st["max_min"] == pytest.approx(1.1) and st["p99_p50"] == pytest.approx(1.0505)
    assert st["cv"] == pytest.approx(float(flat.std() / flat.mean())) and is_stable(st)
    bimodal = budget_fixtures.np.array([1.0, 5.0] * 50)  # cv 0.67, p99/p50 1.67, max/min 5
    assert not is_stable(stability(bimodal))
    for key, limit in STABLE.items():  # each figure alone can make a profile unstable
        assert not is_stable({**{k: 0.0 for k in STABLE}, key: limit * 1.01})
        assert is_stable({**{k: 0.0 for k in STABLE}, key: limit})


def test_an_unstable_variant_is_measured_again_and_not_cached(bundle, tmp_path):
    import time

    from edgekit.profile_cache import measure

    calls = {"n": 0}

    def bimodal():  # every other call 4 ms instead of ~0: never stable
        calls["n"] += 1
        if calls["n"] % 2:
            time.sleep(0.004)

    got = measure({"flappy": bimodal}, warmup=2, min_runs=10, max_runs=20, max_seconds=0.05, attempts=3)
    row = got["flappy"]
    assert row["stable"] is False and row["attempts"] == 3 and row["runs"] >= 10
    assert row["stability"]["max_min"] > 4.0

    pc = ProfileCache(edgekit.Bundle(bundle), {"threads": 1}, root=tmp_path)
    rows = {"fp32": {"p50_ms": 1.0, "stable": True}, "pruned": {"p50_ms": 0.1, "stable": False}}
    assert pc.get(["fp32", "pruned"], lambda vids: {v: rows[v] for v in vids}) == rows  # used now ...
    assert set(pc.load()) == {"fp32"}  # ... but only the stable one is kept
    asked = []
    pc.get(["fp32", "pruned"], lambda vids: asked.extend(vids) or {v: rows[v] for v in vids})
    assert asked == ["pruned"]  # measured again next time
