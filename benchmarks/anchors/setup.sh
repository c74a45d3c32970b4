#!/usr/bin/env bash
# Build the anchor environment: onnxruntime-genai and llama-cpp-python in their own venv,
# plus the genai model builder's converter deps, then the anchor models.
#
#   bash benchmarks/anchors/setup.sh            # venv + models
#   bash benchmarks/anchors/setup.sh venv       # venv only
#   bash benchmarks/anchors/setup.sh models     # models only (venv must exist)
#
# Everything lands under $ANCHOR_DIR (default benchmarks/.anchors, gitignored).
# llama-cpp-python compiles llama.cpp from source: on 2 cores expect 20-40 minutes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ANCHOR_DIR="${ANCHOR_DIR:-$REPO/benchmarks/.anchors}"
VENV="$ANCHOR_DIR/venv"
PY="${PYTHON:-python3.11}"
STEP="${1:-all}"

GENAI_VERSION="${GENAI_VERSION:-0.18.0}"
LLAMA_CPP_VERSION="0.3.36"

build_venv() {
    mkdir -p "$ANCHOR_DIR"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
    # torch: only ever this exact version (a local CPU wheel); anything else pulls CUDA builds.
    "$VENV/bin/pip" install -q "torch==2.13.0" "transformers<4.58" gguf accelerate \
        onnx onnx_ir numpy sentencepiece protobuf
    "$VENV/bin/pip" install -q "onnxruntime-genai==$GENAI_VERSION"
    if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
            nice -n 10 "$VENV/bin/pip" install -v --no-cache-dir "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    "$VENV/bin/python" -c "import onnxruntime_genai, llama_cpp; \
print('genai', onnxruntime_genai.__version__, 'llama_cpp', llama_cpp.__version__)"
}

build_models() {
    nice -n 10 "$VENV/bin/python" "$HERE/prepare_models.py" --anchor-dir "$ANCHOR_DIR" "${@}"
}

case "$STEP" in
    venv) build_venv ;;
    models) shift || true; build_models "$@" ;;
    all) build_venv; build_models ;;
    *) echo "usage: $0 [all|venv|models]" >&2; exit 2 ;;
esac
