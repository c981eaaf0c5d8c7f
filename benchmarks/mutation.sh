#!/usr/bin/env bash
# Mutation testing (not part of CI): how many planted bugs (mutmut mutants) each module's own tests catch.
#
#   bash benchmarks/mutation.sh                      # all five modules below
#   bash benchmarks/mutation.sh sdk/bundle.py        # one module (or several)
#   MUTATION_SHARD=1/2 bash benchmarks/mutation.sh sdk/bundle.py   # every 2nd mutant from the 2nd: with 0/2 in
#                                                    # another shell, the two runs share the work (add the counts)
#
# The working tree is never mutated: the package is copied into a private folder laid out as it is installed
# (edgekit/ = sdk/ + converters/ + runtimes/ + apps/ + boards/), put first on PYTHONPATH (before the editable
# install). mutmut's mutation engine (mutmut 2.5.1: list_mutations / mutate) writes one mutant at a time into
# that copy, and the module's own test files run on it with pytest in one Python process (-x: the first failure
# kills the mutant; a run over 5x the baseline, at least 30 s, counts as killed): numpy, onnxruntime and TVM are
# imported once, edgekit and the tests are re-imported for every mutant (~1-3 s each instead of ~20 s for a fresh
# pytest on a loaded 2-core box). Slow test builds (TVM kernels) are reused through EDGEKIT_TEST_CACHE
# (tests/conftest.py). Prints per module: SCORE killed/total, then one SURVIVED line per surviving mutant.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
declare -A TESTS=(
  [converters/validate.py]="tests/converters/test_validate.py"
  [sdk/latency.py]="tests/sdk/test_budget_rules.py tests/sdk/test_budget.py"
  [sdk/bundle.py]="tests/sdk/test_bundle_security.py"
  [sdk/specs.py]="tests/sdk/test_dtypes.py tests/sdk/test_session_onnx.py"
  [converters/calibration.py]="tests/converters/test_calibration.py"
)
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=(converters/validate.py sdk/latency.py sdk/bundle.py sdk/specs.py \
                                     converters/calibration.py)

python -c "import mutmut" 2>/dev/null || python -m pip install -q 'mutmut==2.5.1'
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-mutation-XXXXXX")"
echo "work folder: $WORK"

DRIVER="$WORK/driver.py"
cat > "$DRIVER" <<'PY'
"""Run every mutmut mutant of sys.argv[1] against the test files sys.argv[2:], in this process."""
import difflib
import os
import signal
import sys
import time
from pathlib import Path

import mutmut
import pytest

target, tests = Path(sys.argv[1]), sys.argv[2:]
original = target.read_text()
sys.dont_write_bytecode = True      # a mutant of the same size and mtime must not be read from a stale .pyc


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout()


def run_tests(limit: float) -> int:
    """pytest in this process (numpy, onnxruntime, TVM stay imported); edgekit and the tests are re-imported."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("edgekit", "models", "conftest", "budget_fixtures")
                 or m.split(".")[0].startswith("test_") or m.startswith("tests.")]:
        del sys.modules[name]
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(limit))
    try:
        return int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]))
    except Timeout:
        return -1
    finally:
        signal.alarm(0)


t0 = time.time()
base = run_tests(1800)
baseline = time.time() - t0
import edgekit  # noqa: E402

assert edgekit.__file__.startswith(str(Path.cwd())), edgekit.__file__   # the copy is what the tests import
if base != 0:
    sys.exit(f"{target}: the tests fail without any mutation (exit {base})")
ids = mutmut.list_mutations(mutmut.Context(source=original, filename=str(target)))
shard = os.environ.get("MUTATION_SHARD", "0/1")       # "k/n": every n-th mutant from the k-th (parallel runs)
k, n = (int(x) for x in shard.split("/"))
ids = ids[k::n]
survivors, killed = [], 0
for mid in ids:
    mutated, _ = mutmut.mutate(mutmut.Context(source=original, filename=str(target), mutation_id=mid))
    target.write_text(mutated)
    try:
        code = run_tests(max(30.0, 5 * baseline))
    finally:
        target.write_text(original)
    if code == 0:
        diff = [ln for ln in difflib.unified_diff(original.splitlines(), mutated.splitlines(), lineterm="", n=0)
                if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
        survivors.append(f"line {mid.line_number + 1}: " + " => ".join(x.strip() for x in diff))
    else:
        killed += 1
print(f"\nSCORE {sys.argv[1]} (mutants {shard}): {killed}/{len(ids)} mutants killed ({100 * killed / max(len(ids), 1):.0f}%), "
      f"{len(survivors)} survived; baseline {baseline:.1f} s, total {time.time() - t0:.0f} s")
print("\n".join(f"SURVIVED {s}" for s in survivors))
PY

for mod in "${MODULES[@]}"; do
  tests="${TESTS[$mod]:-}"
  [ -n "$tests" ] || { echo "no test files known for $mod" >&2; exit 2; }
  run="$WORK/$(echo "$mod" | tr / _)"
  mkdir -p "$run/edgekit"
  cp -r "$REPO/sdk/." "$run/edgekit/"
  for sub in converters runtimes apps boards; do cp -r "$REPO/$sub" "$run/edgekit/$sub"; done
  cp -r "$REPO/tests" "$REPO/pyproject.toml" "$run/"
  find "$run" -name __pycache__ -prune -exec rm -rf {} +
  case "$mod" in
    sdk/*) target="edgekit/${mod#sdk/}" ;;
    *) target="edgekit/$mod" ;;
  esac
  # no plugin autoload: scanning every installed distribution's entry points costs ~1.4 s per pytest run
  # shellcheck disable=SC2086  # $tests is a list of paths
  (cd "$run" && PYTHONPATH="$run" EDGEKIT_TEST_CACHE="$WORK/test-cache" PYTHONDONTWRITEBYTECODE=1 \
     PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
     python "$DRIVER" "$target" $tests) > "$run/mutation.log" 2>&1 || { tail -20 "$run/mutation.log"; exit 1; }
  grep -E "^(SCORE|SURVIVED)" "$run/mutation.log"
done
