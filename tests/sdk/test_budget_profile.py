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
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
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
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
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
