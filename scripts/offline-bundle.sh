#!/usr/bin/env bash
# On a connected machine: gather everything a board with no network needs to run edge-runtime.
#
#   bash scripts/offline-bundle.sh [--python 3.11] [--platform manylinux_2_31_aarch64]
#        [--bundle models/qwen2.5-coder-0.5b-instruct-int4] [--extra-wheel FILE.whl]...
#        [--out dist/edge-runtime-offline]
#
# Writes OUT/ and OUT.tar.gz holding:
#   wheelhouse/   edge-runtime and its device dependencies (no torch: the convert extra is not
#                 needed on a board), built for the board's platform and Python version, plus pip
#   models/NAME/  the bundle (checked with its manifest before it is copied)
#   config.toml   from systemd/config.example.toml, pointing at the installed bundle
#   systemd/      the unit file and the per-board drop-ins
#   install.sh    run it on the board as root (scripts/install-offline.sh)
#   target.txt    the platform and Python version the wheelhouse was built for
#
# Jetson: PyPI's onnxruntime is CPU-only on aarch64. Pass NVIDIA's onnxruntime-gpu wheel for
# the board's JetPack and Python with --extra-wheel; install.sh then uses it instead
# (docs/deployment.md says where that wheel comes from).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
PYVER=3.11
PLATFORM=manylinux_2_31_aarch64
BUNDLE=$REPO/models/qwen2.5-coder-0.5b-instruct-int4
OUT=$REPO/dist/edge-runtime-offline
EXTRA=()

die() { printf 'offline-bundle: %s\n' "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYVER=$2; shift ;;
        --platform) PLATFORM=$2; shift ;;
        --bundle) BUNDLE=$(cd "$2" && pwd); shift ;;
        --extra-wheel) EXTRA+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

platform_tags() {
    # pip takes platform tags literally: add the older manylinux levels that the board's glibc
    # also runs (onnxruntime's aarch64 wheels are manylinux_2_27/2_28, many others 2014/2_17).
    local arch top level tags=()
    arch=$(printf '%s' "$PLATFORM" | sed -E 's/^manylinux(2014|_[0-9]+_[0-9]+)_//')
    top=$(printf '%s' "$PLATFORM" | sed -E 's/^manylinux_2_([0-9]+)_.*/\1/; s/^manylinux2014_.*/17/')
    for level in 36 35 34 33 32 31 30 29 28 27 26 17; do
        [ "$level" -le "$top" ] && tags+=("manylinux_2_${level}_$arch")
    done
    tags+=("manylinux2014_$arch")
    printf -- '--platform %s ' "${tags[@]}"
}

[ -f "$BUNDLE/manifest.json" ] || die "no bundle at $BUNDLE (run edge-runtime prepare-default first)"
step "checking the bundle against its manifest"
"$PY" -c 'import sys; from edge_runtime.bundle import verify_bundle; m = verify_bundle(sys.argv[1]); print(m.name, "verified")' "$BUNDLE"

rm -rf "$OUT" "$OUT.tar.gz"
mkdir -p "$OUT/wheelhouse" "$OUT/models" "$OUT/systemd"
ABI=cp${PYVER/./}
read -ra TAGS <<<"$(platform_tags)"
PIN=(--only-binary=:all: "${TAGS[@]}" --python-version "$PYVER" --implementation cp --abi "$ABI")

step "building the edge-runtime wheel"
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$OUT/wheelhouse" "$REPO"
WHEEL=$(ls "$OUT"/wheelhouse/edge_runtime-*.whl)

step "downloading the device dependencies for $PLATFORM, Python $PYVER"
"$PY" -m pip download -q --disable-pip-version-check -d "$OUT/wheelhouse" "${PIN[@]}" "$WHEEL" pip
for wheel in "${EXTRA[@]}"; do
    cp "$wheel" "$OUT/wheelhouse/"
done

step "copying the bundle, config, unit file and install script"
NAME=$(basename "$BUNDLE")
cp -r "$BUNDLE" "$OUT/models/$NAME"
sed "s#^bundle = .*#bundle = \"/opt/edge-runtime/models/$NAME\"#" \
    "$REPO/systemd/config.example.toml" >"$OUT/config.toml"
cp "$REPO/systemd/edge-runtime.service" "$OUT/systemd/"
cp -r "$REPO/systemd/dropins" "$OUT/systemd/"
cp "$REPO/scripts/install-offline.sh" "$OUT/install.sh"
chmod +x "$OUT/install.sh"
printf 'platform=%s\npython=%s\nbundle=%s\n' "$PLATFORM" "$PYVER" "$NAME" >"$OUT/target.txt"
(cd "$OUT" && find . -type f -print0 | sort -z | xargs -0 sha256sum >"$OUT.sums" && mv "$OUT.sums" SHA256SUMS)

step "packing $OUT.tar.gz"
tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
du -sh "$OUT" "$OUT.tar.gz"
ls "$OUT/wheelhouse"
