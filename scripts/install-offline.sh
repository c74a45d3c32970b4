#!/usr/bin/env bash
# On the board, with no network: install edge-runtime from a folder made by offline-bundle.sh.
#
#   sudo ./install.sh [--prefix /opt/edge-runtime] [--no-start] [--destdir DIR]
#
# Creates PREFIX/venv from the wheelhouse (pip --no-index), copies the model to PREFIX/models,
# installs /etc/edge-runtime/config.toml (an existing one is kept), the credentials folder,
# the unit file and a drop-in with this board's memory limits and device access (from
# `edge-runtime doctor --systemd-dropin`), then enables and starts the service and runs
# `edge-runtime doctor`. Safe to run again (an upgrade replaces the venv and the model).
# --destdir stages everything under DIR and skips systemctl (for packaging and tests).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/edge-runtime
DESTDIR=""
START=1
PY=${PYTHON:-python3}

die() { printf 'install: %s\n' "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift ;;
        --destdir) DESTDIR=$(mkdir -p "$2" && cd "$2" && pwd); START=0; shift ;;
        --no-start) START=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or stage with --destdir DIR)"

target() { sed -n "s/^$1=//p" "$HERE/target.txt"; }
want=$(target python)
BUNDLE_NAME=$(target bundle)
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || die "the wheelhouse is for Python $want, this board has $have ($PY); rebuild with offline-bundle.sh --python $have"

step "checking the files against SHA256SUMS"
(cd "$HERE" && sha256sum --quiet -c SHA256SUMS) || die "files are damaged; copy the folder again"

ROOT=$DESTDIR$PREFIX
ETC=$DESTDIR/etc/edge-runtime
UNITDIR=$DESTDIR/etc/systemd/system
VENV=$ROOT/venv

step "creating $VENV from the wheelhouse (no network)"
rm -rf "$VENV"
mkdir -p "$ROOT"
# --without-pip, then pip from its own wheel: works where python3-venv (ensurepip) is absent.
"$PY" -m venv --without-pip "$VENV"
PIP_WHEEL=$(find "$HERE/wheelhouse" -name 'pip-*.whl' | head -n 1)
"$VENV/bin/python" "$PIP_WHEEL/pip" install -q --no-index --find-links "$HERE/wheelhouse" pip
PIP=("$VENV/bin/python" -m pip install -q --no-index --find-links "$HERE/wheelhouse")
if ls "$HERE"/wheelhouse/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
    # NVIDIA's GPU build provides the same `onnxruntime` module under another name: install
    # it and the other dependencies, then edge-runtime itself without its onnxruntime pin.
    "${PIP[@]}" onnxruntime-gpu numpy tokenizers paho-mqtt jinja2 pydantic
    "${PIP[@]}" --no-deps edge-runtime
else
    "${PIP[@]}" edge-runtime
fi

step "installing the model into $ROOT/models"
mkdir -p "$ROOT/models"
rm -rf "$ROOT/models/$BUNDLE_NAME"
cp -r "$HERE/models/$BUNDLE_NAME" "$ROOT/models/"
chmod -R a+rX "$ROOT"

step "installing the configuration into $ETC"
mkdir -p "$ETC/credentials"
chmod 0700 "$ETC/credentials"
if [ -f "$ETC/config.toml" ]; then
    echo "keeping the existing $ETC/config.toml"
else
    install -m 0644 "$HERE/config.toml" "$ETC/config.toml"
fi
# The unit loads this file as the credential "broker-password"; empty until you set one.
[ -f "$ETC/credentials/broker-password" ] || install -m 0600 /dev/null "$ETC/credentials/broker-password"

step "installing the unit file and this board's drop-in"
mkdir -p "$UNITDIR/edge-runtime.service.d"
sed "s#/opt/edge-runtime/venv#$PREFIX/venv#" "$HERE/systemd/edge-runtime.service" \
    >"$UNITDIR/edge-runtime.service"
"$VENV/bin/edge-runtime" doctor --systemd-dropin --config "$ETC/config.toml" \
    >"$UNITDIR/edge-runtime.service.d/profile.conf"
cat "$UNITDIR/edge-runtime.service.d/profile.conf"

step "checking the board (edge-runtime doctor)"
"$VENV/bin/edge-runtime" doctor --config "$ETC/config.toml" --model "$ROOT/models/$BUNDLE_NAME" \
    || echo "doctor found problems (above); fix them, then: systemctl restart edge-runtime"

if [ "$START" = 1 ] && command -v systemctl >/dev/null; then
    step "enabling and starting edge-runtime.service"
    systemctl daemon-reload
    systemctl enable --now edge-runtime.service
    systemctl --no-pager status edge-runtime.service | head -n 5 || true
else
    echo "not started; to start: systemctl daemon-reload && systemctl enable --now edge-runtime"
fi
