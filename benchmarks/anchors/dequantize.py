"""Dequantize the benchmark GGUFs to fp32 Hugging Face folders for the genai builder.

Runs in the main interpreter (transformers < 4.58 with gguf and accelerate, the convert extra):

    python benchmarks/anchors/dequantize.py [--model qwen]

The genai builder in the anchor venv needs a newer transformers, whose GGUF loading is not
the one this project checked, so the two steps run in different interpreters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import sources


def dequantize(spec: sources.ModelSpec, out: Path) -> None:
    """Write an fp32 Hugging Face folder (config, weights, tokenizer) for ``spec``."""
    if (out / "config.json").is_file():
        print(f"[{spec.key}] hf folder exists: {out}", flush=True)
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sources.gguf_path(spec)
    print(f"[{spec.key}] dequantizing {gguf}", flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(sources.MODELS), action="append")
    args = parser.parse_args()
    for key in args.model or ["smollm2", "qwen"]:
        spec = sources.MODELS[key]
        dequantize(spec, sources.hf_dir(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
