#!/usr/bin/env bash
# Build the anchor environment: onnxruntime-genai and llama-cpp-python in their own venv,
# plus what the genai model builder needs, then the anchor models.
#
# The builder of onnxruntime-genai 0.18 imports model classes that only transformers 5.x has,
# so the anchor venv carries a newer transformers than the convert extra (< 4.58). The GGUF
# is dequantized by the MAIN interpreter (its transformers is the one whose GGUF loading this
# project checked); the builder then runs in the anchor venv on that fp32 folder.
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
    "$VENV/bin/pip" install -q "torch==2.13.0" "transformers>=5.5,<6" gguf accelerate \
        onnx onnx_ir numpy sentencepiece protobuf tokenizers
    "$VENV/bin/pip" install -q "onnxruntime-genai==$GENAI_VERSION"
    if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
            nice -n 10 "$VENV/bin/pip" install -v --no-cache-dir "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    "$VENV/bin/python" -c "import onnxruntime_genai, llama_cpp; \
print('genai', onnxruntime_genai.__version__, 'llama_cpp', llama_cpp.__version__)"
}

build_models() {
    export TQDM_DISABLE=1
    nice -n 10 "${MAIN_PYTHON:-python3}" "$HERE/dequantize.py" "$@"
    nice -n 10 "$VENV/bin/python" "$HERE/prepare_models.py" --anchor-dir "$ANCHOR_DIR" "$@"
}

case "$STEP" in
    venv) build_venv ;;
    models) shift || true; build_models "$@" ;;
    all) build_venv; build_models ;;
    *) echo "usage: $0 [all|venv|models]" >&2; exit 2 ;;
esac
