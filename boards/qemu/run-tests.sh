#!/usr/bin/env bash
# Run edgekit's tests marked `aarch64` on an emulated Raspberry Pi 4 CPU (qemu-aarch64 -cpu cortex-a72).
#
# 1. installs qemu-user if missing (when it cannot: a SKIPPED line and exit 0, or with CI=true a FAILED line and
#    exit 1: CI must not pass without the aarch64 tests);
# 2. builds an aarch64 sysroot from Debian's arm64 packages (the python3.11 closure, `apt-get download` +
#    `dpkg -x`; no binfmt_misc needed) with a Cortex-A72 /proc/cpuinfo (onnxruntime parses it at import);
# 3. builds edgekit's wheel from this checkout (`pip wheel --no-deps`, the README's deploy path) and installs
#    `WHEEL[tflite]` for aarch64 with pip --target (every manylinux_2_N tag): the dependencies a Pi gets from the
#    wheel's own metadata; steps 2-3 are cached under ~/.cache/edgekit/qemu/, keyed on their inputs;
# 4. puts this run's edgekit (from the wheel) first on the guest's path, builds the fixtures (models, bundles,
#    reference outputs) on the host with boards/qemu/make_fixtures.py;
# 5. runs `pytest -m aarch64 tests/aarch64` under qemu and ends with pytest's summary line.
#
# Usage: boards/qemu/run-tests.sh [extra pytest args]
# Env:   EDGEKIT_QEMU_CACHE (cache folder), PYTHON (host python, default python3), QEMU_CPU (default cortex-a72),
#        CI (true: a missing qemu or apt is a failure, not a skip)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/boards/qemu"
CACHE="${EDGEKIT_QEMU_CACHE:-$HOME/.cache/edgekit/qemu}"
PYTHON="${PYTHON:-python3}"
QEMU_CPU="${QEMU_CPU:-cortex-a72}"
# the guest's runtime-only install besides edgekit's wheel with its TFLite extra (step 3)
WHEELS=(pytest)
# TVM runtime-only, at the host's version (the host compiles the kernels the guest runs); its compiler library
# (~240 MB) is removed from the guest's copy, so `import tvm` loads the runtime only
TVM_VERSION=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('apache-tvm'))" 2>/dev/null || true)
[ -n "$TVM_VERSION" ] && WHEELS+=("apache-tvm==$TVM_VERSION")
START=$(date +%s)

log() { printf '[qemu %3ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
key() { { cat "$@"; } | sha256sum | cut -c1-16; }
# cannot run here: a skip on a developer's machine, a failure in CI
skip() {
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        echo "FAILED: $* (CI=true: the aarch64 tests must run in CI)"; exit 1
    fi
    echo "SKIPPED: $*"; exit 0
}

# ---------------------------------------------------------------- 1. qemu
if ! command -v qemu-aarch64 >/dev/null; then
    log "installing qemu-user"
    if ! { sudo_ apt-get update -qq && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } \
            >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null; then
        skip "qemu-aarch64 is not installed and cannot be installed here (needs apt-get and root);" \
             "install qemu-user to run the aarch64 tests"
    fi
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || \
    skip "building the arm64 sysroot needs Debian/Ubuntu's apt-get and dpkg"
mkdir -p "$CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgekit-qemu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# run a step with its output in a log, shown only when it fails
quiet() { "$@" >"$WORK/step.log" 2>&1 || { cat "$WORK/step.log" >&2; echo "FAILED: $*" >&2; exit 1; }; }

# ---------------------------------------------------------------- 2. sysroot
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
# the cache keys: everything that decides what goes in (bump RECIPE when changing how it is built)
ROOT_PKGS=(python3.11:arm64 libstdc++6:arm64 libgomp1:arm64)
RECIPE=1
SYSROOT_KEY=$(printf '%s\n' "$RECIPE" "$CODENAME" "${ROOT_PKGS[@]}" | key "$HERE/cpuinfo-cortex-a72" -)
SYSROOT="$CACHE/sysroot-$CODENAME-$SYSROOT_KEY"
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
    log "building the arm64 sysroot ($SYSROOT)"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        sudo_ dpkg --add-architecture arm64
    fi
    quiet sudo_ apt-get update -qq
    TMP="$SYSROOT.tmp.$$"
    rm -rf "$TMP"; mkdir -p "$TMP/debs" "$TMP/root"
    # the arm64 closure of python3.11, plus the C++ runtime the wheels link against
    mapfile -t PKGS < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances "${ROOT_PKGS[@]}" 2>/dev/null \
        | grep -E '^[a-z0-9].*:arm64$' | grep -vE '^(dpkg|tar|install-info|perl.*|libperl.*):' | sort -u)
    if [ "${#PKGS[@]}" -lt 10 ]; then
        echo "FAILED: apt knows no arm64 python3.11 closure (got ${#PKGS[@]} packages): the sysroot recipe" \
             "needs Debian 12 (bookworm) apt sources with the arm64 architecture" >&2
        exit 1
    fi
    log "downloading ${#PKGS[@]} arm64 packages"
    (cd "$TMP/debs" && apt-get download -qq "${PKGS[@]}" >"$TMP/apt.log" 2>&1) || { cat "$TMP/apt.log" >&2; exit 1; }
    for deb in "$TMP"/debs/*.deb; do dpkg -x "$deb" "$TMP/root"; done
    # an emulated Raspberry Pi 4 CPU: qemu -L redirects the guest's /proc/cpuinfo read here
    mkdir -p "$TMP/root/proc"
    cp "$HERE/cpuinfo-cortex-a72" "$TMP/root/proc/cpuinfo"
    # empty site folders, so the guest never falls through -L to the host's Python packages
    mkdir -p "$TMP/root/usr/lib/python3/dist-packages" "$TMP/root/usr/local/lib/python3.11/dist-packages"
    rm -rf "$TMP/debs"
    rm -rf "$SYSROOT"; mv "$TMP/root" "$SYSROOT"; rm -rf "$TMP"
fi
GUEST=(qemu-aarch64 -cpu "$QEMU_CPU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11")
"${GUEST[@]}" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine()" \
    || { echo "FAILED: the arm64 python does not start under qemu-aarch64"; exit 1; }

# ---------------------------------------------------------------- 3. edgekit's wheel + aarch64 dependencies
log "building the edgekit wheel"
quiet "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/edgekit_sdk-*.whl)
# what the wheel asks for (its Requires-Dist lines) decides the cached dependency set, not its code
REQUIRES=$("$PYTHON" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
print(''.join(l for n in z.namelist() if n.endswith('.dist-info/METADATA') \
for l in z.read(n).decode().splitlines(True) if l.startswith('Requires-Dist')))" "$WHEEL")
SITE_RECIPE=3  # 2: TVM runtime-only (libtvm_compiler.so removed); 3: dependencies from WHEEL[tflite]
SITE_KEY=$(printf '%s\n' "$RECIPE" "$SITE_RECIPE" "${WHEELS[@]}" "$REQUIRES" | key -)
SITE="$CACHE/site-py311-$SITE_KEY"
if [ ! -f "$SITE/.complete" ]; then
    log "installing aarch64 wheels: $(basename "$WHEEL")[tflite] ${WHEELS[*]}"
    PLAT=(); for n in $(seq 17 36); do PLAT+=(--platform "manylinux_2_${n}_aarch64"); done
    PLAT+=(--platform manylinux2014_aarch64 --platform linux_aarch64)
    rm -rf "$SITE.tmp"
    quiet "$PYTHON" -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$SITE.tmp" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 "${PLAT[@]}" \
        "$WHEEL[tflite]" "${WHEELS[@]}"
    # the cache keeps the dependencies; each run puts its own edgekit first on the path (step 4)
    rm -rf "$SITE.tmp"/edgekit "$SITE.tmp"/edgekit_sdk-*.dist-info "$SITE.tmp"/bin
    # the board runs kernels compiled on the host: only the TVM runtime is needed (tvm falls back to
    # runtime-only when the compiler library is absent); CUDA runtime too: no GPU on a Pi
    rm -f "$SITE.tmp"/tvm/lib/libtvm_compiler.so "$SITE.tmp"/tvm/lib/libtvm_runtime_cuda.so
    touch "$SITE.tmp/.complete"
    rm -rf "$SITE"; mv "$SITE.tmp" "$SITE"
fi

# ---------------------------------------------------------------- 4. edgekit + fixtures
quiet "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --target "$WORK/edgekit" "$WHEEL"
log "building fixtures on the host"
quiet "$PYTHON" "$HERE/make_fixtures.py" "$WORK/fixtures"
tail -1 "$WORK/step.log" >&2

# ---------------------------------------------------------------- 5. the tests, emulated
log "running pytest -m aarch64 under qemu-aarch64 -cpu $QEMU_CPU"
cd "$ROOT"
env -i PATH=/usr/bin:/bin HOME="$WORK" LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 \
    PYTHONPATH="$WORK/edgekit:$SITE" EDGEKIT_AARCH64_FIXTURES="$WORK/fixtures" EDGEKIT_QEMU=1 \
    OMP_NUM_THREADS=1 \
    "${GUEST[@]}" -m pytest -m aarch64 -p no:cacheprovider -q --no-header tests/aarch64 "$@"
exit $?  # nothing after pytest: its summary line is the last line
