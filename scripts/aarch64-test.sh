#!/usr/bin/env bash
# Run the device half on aarch64 under qemu-user emulation (evidence for ARM boards).
#
# Builds, outside the repo (default /var/tmp/edge-runtime-aarch64):
#   rootfs/  a minimal Debian bookworm arm64 with python3.11 (debootstrap first stage, unpacked)
#   site/    onnxruntime, numpy, tokenizers, jinja2, pydantic, paho-mqtt, pytest: aarch64 wheels
#   cache/   tiny bundles converted on this (x86) host; bundles are platform-independent
# then runs the model-free unit tests and the engine tests against the host-built bundles with
# an aarch64 python3.11 under qemu-aarch64-static, and generates from a tiny int4 bundle.
#
# Usage: bash scripts/aarch64-test.sh      (root for apt-get on first use; slow: minutes)
# Env:   EDGE_AARCH64_DIR (work folder), DEBIAN_MIRROR, PYTEST_ARGS (extra args, e.g. -x)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${EDGE_AARCH64_DIR:-/var/tmp/edge-runtime-aarch64}
ROOT=$WORK/rootfs
SITE=$WORK/site
CACHE=$WORK/cache
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${PYTHON:-python3}
PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64)
DEVICE_DEPS=(onnxruntime numpy tokenizers jinja2 pydantic paho-mqtt pytest)
# Tests left out under emulation, and why:
#   test_cli_real_model.py   needs the real SmolLM2 bundle (converted with torch)
#   test_device_imports.py   starts child processes of sys.executable (no binfmt here)
#   *transformers*           compare with transformers, which the device half never has
IGNORES=(--ignore=tests/engine/test_cli_real_model.py --ignore=tests/engine/test_device_imports.py)
DESELECT=(-k "not transformers")
ENGINE_TESTS=(tests/engine tests/devices/test_device_profiles.py)

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

need_tools() {
    if command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "need qemu-user-static and debootstrap: sudo apt-get install qemu-user-static debootstrap" >&2
        exit 1
    fi
    step "install qemu-user-static and debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap >/dev/null
}

make_rootfs() {
    if [ -x "$ROOT/usr/bin/python3.11" ]; then
        return
    fi
    step "debootstrap a minimal arm64 Debian bookworm into $ROOT"
    # --foreign only downloads and unpacks: no arm64 program runs, so no binfmt is needed.
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11 \
        bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log"
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$ROOT"
    done
}

fake_cpuinfo() {
    # qemu-user passes the host's /proc/cpuinfo through; onnxruntime's CPU detection (cpuinfo)
    # cannot parse an x86 one on aarch64 and crashes. Paths under -L ROOT win, so give it an
    # ARM one (Cortex-A72, as on a Raspberry Pi 4) with this host's CPU count.
    mkdir -p "$ROOT/proc"
    local n i
    n=$(nproc)
    : >"$ROOT/proc/cpuinfo"
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >>"$ROOT/proc/cpuinfo"
    done
}

install_wheels() {
    if [ -d "$SITE/onnxruntime" ]; then
        return
    fi
    step "download aarch64 wheels and install them into $SITE"
    local plat=()
    for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
    local pin=(--python-version 3.11 --implementation cp --abi cp311 --only-binary=:all:)
    "$HOST_PY" -m pip download -q -d "$WORK/wheels" "${plat[@]}" "${pin[@]}" "${DEVICE_DEPS[@]}"
    "$HOST_PY" -m pip install -q --no-index --find-links "$WORK/wheels" --target "$SITE" \
        "${plat[@]}" "${pin[@]}" "${DEVICE_DEPS[@]}"
}

host_bundles() {
    step "convert the tiny test bundles on this host (cache: $CACHE)"
    mkdir -p "$CACHE"
    # The host's own engine tests build (and reuse) every bundle they need in the cache.
    (cd "$REPO" && EDGE_RUNTIME_TEST_CACHE=$CACHE nice -n 10 "$HOST_PY" -m pytest -q \
        -p no:cacheprovider "${IGNORES[@]}" "${DESELECT[@]}" "${ENGINE_TESTS[@]}")
    if [ ! -f "$CACHE/bundle-tiny-llama-int4-cli/manifest.json" ]; then
        (cd "$REPO" && nice -n 10 edge-runtime convert "$CACHE/hf-tiny-llama" --quant int4 \
            -o "$CACHE/bundle-tiny-llama-int4-cli" --force)
    fi
}

arm() {
    PYTHONPATH="$REPO:$SITE" PYTHONDONTWRITEBYTECODE=1 \
        qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"
}

run_arm() {
    step "aarch64: interpreter and onnxruntime"
    arm -c 'import platform, sys, onnxruntime as ort
print(platform.machine(), sys.version.split()[0], "onnxruntime", ort.__version__,
      ort.get_available_providers())
assert platform.machine() == "aarch64"'
    step "aarch64: engine and device tests against the host-built bundles"
    # PYTEST_ARGS is split into words on purpose.
    # shellcheck disable=SC2086
    (cd "$REPO" && EDGE_RUNTIME_TEST_CACHE=$CACHE nice -n 10 \
        env PYTHONPATH="$REPO:$SITE" PYTHONDONTWRITEBYTECODE=1 \
        qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -m pytest -q \
        -p no:cacheprovider "${IGNORES[@]}" "${DESELECT[@]}" ${PYTEST_ARGS:-} "${ENGINE_TESTS[@]}")
    local bundle
    for bundle in "$CACHE/bundle-tiny-llama-fp32-optimum" "$CACHE/bundle-tiny-llama-int4-cli"; do
        compare_generation "$bundle"
    done
}

compare_generation() {
    local bundle=$1 host_out arm_out host_ids arm_ids
    step "generate greedily from $(basename "$bundle") on the host, then on aarch64"
    host_out=$(cd "$REPO" && "$HOST_PY" -c "$SMOKE" "$bundle")
    printf '%s\n' "$host_out"
    arm_out=$(cd "$REPO" && nice -n 10 env PYTHONPATH="$REPO:$SITE" \
        qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -c "$SMOKE" "$bundle")
    printf '%s\n' "$arm_out"
    host_ids=$(printf '%s\n' "$host_out" | tail -n 1)
    arm_ids=$(printf '%s\n' "$arm_out" | tail -n 1)
    if [ "$host_ids" = "$arm_ids" ]; then
        echo "greedy tokens: identical on x86_64 and aarch64"
    else
        # Kernels differ per instruction set in summation order, and a random tiny model has
        # near-ties: report the difference, do not fail on it.
        echo "greedy tokens differ between x86_64 and aarch64 (kernel rounding on near-ties)"
    fi
}

SMOKE='
import platform, sys, time
from edge_runtime.engine import EngineOptions, load_engine
from edge_runtime.engine.types import SamplingParams
started = time.perf_counter()
engine = load_engine(sys.argv[1], EngineOptions(provider="cpu"))
params = SamplingParams(max_tokens=24, temperature=0)
result = engine.generate("The field station reports", params, chat=False)
print(platform.machine(), result.usage.completion_tokens, "tokens,",
      result.finish_reason.value, f"{time.perf_counter() - started:.1f} s incl. load")
assert result.usage.completion_tokens > 0
print("token ids:", list(result.token_ids))
'

main() {
    local started=$SECONDS
    mkdir -p "$WORK"
    need_tools
    make_rootfs
    fake_cpuinfo
    install_wheels
    host_bundles
    run_arm
    step "aarch64 run passed in $((SECONDS - started)) s"
}

main "$@"
