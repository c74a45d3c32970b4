"""Build the onnxruntime-genai anchor models with genai's own model builder (int4, cpu).

Runs in the anchor venv after ``dequantize.py`` wrote the fp32 Hugging Face folders:

    benchmarks/.anchors/venv/bin/python benchmarks/anchors/prepare_models.py [--model qwen]

The builder runs with its defaults for the CPU provider (block size 32, accuracy level 4),
the way a user of onnxruntime-genai would build the model. Existing models are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import sources


def build_genai(spec: sources.ModelSpec, hf: Path, out: Path, cache: Path) -> None:
    """Run the genai model builder on ``hf`` into ``out``."""
    if (out / "genai_config.json").is_file():
        print(f"[{spec.key}] genai model exists: {out}", flush=True)
        return
    if not (hf / "config.json").is_file():
        raise SystemExit(f"{hf} missing: run benchmarks/anchors/dequantize.py first")
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf), "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(cache),
        "--extra_options", "hf_token=false",
    ]
    print(f"[{spec.key}] {' '.join(cmd)}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run(cmd, check=True, env=env)
    (out / "anchor_build.json").write_text(json.dumps({"builder_cmd": cmd}, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anchor-dir", type=Path, default=sources.ANCHOR_DIR)
    parser.add_argument("--model", choices=sorted(sources.MODELS), action="append")
    args = parser.parse_args()
    for key in args.model or ["smollm2", "qwen"]:
        spec = sources.MODELS[key]
        cache = args.anchor_dir / "builder-cache" / key
        build_genai(spec, sources.hf_dir(spec), sources.genai_model_path(spec), cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
