"""``edge-runtime convert``: the converter's command line. Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from converters.options import GRAPHS, INT4_SCHEMES, QUANTS


def register(subparsers: Any) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a model (HF folder, hub id or .gguf) into a bundle",
        description="Convert a small open-weight model into an int4/int8/fp32 ONNX bundle.",
    )
    parser.add_argument("source", help="Hugging Face model folder, hub id, or .gguf file")
    parser.add_argument("-o", "--output", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--quant", choices=QUANTS, default="int4", help="weights (default int4)")
    parser.add_argument("--block-size", type=int, default=32, help="int4 block size (default 32)")
    parser.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=range(5),
        metavar="{0..4}",
        help="int4 MatMulNBits compute accuracy level (default 4: int8 compute)",
    )
    parser.add_argument(
        "--keep-fp32",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave weights whose node or tensor name contains PATTERN unquantized (repeatable)",
    )
    parser.add_argument(
        "--int4-scheme",
        choices=INT4_SCHEMES,
        default="symmetric",
        help="int4 blocks: symmetric (fastest, default), asymmetric, or affine (exact for GGUF"
        " sources, much slower to run)",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="round symmetric int4 weights against a calibration text's activations (GPTQ):"
        " closer to fp32 at the same size and speed; on by default for symmetric int4."
        " --no-calibrate converts faster (about 2.5 minutes less for a 0.5B model)",
    )
    parser.add_argument(
        "--head-bits",
        type=int,
        choices=(4, 8),
        default=4,
        help="bits of the lm_head in an int4 bundle (8: closer to fp32, slower and larger)",
    )
    parser.add_argument("--max-context", type=int, help="cap the context length (tokens)")
    parser.add_argument("--graph", choices=GRAPHS, default="auto", help="graph builder")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run model code shipped with the source"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed arguments say; errors propagate as EdgeRuntimeError."""
    from converters.options import ConvertOptions
    from converters.pipeline import convert, require_extra
    from converters.progress import stderr_progress

    require_extra()
    options = ConvertOptions(
        quant=args.quant,
        block_size=args.block_size,
        accuracy_level=args.accuracy_level,
        keep_fp32=tuple(args.keep_fp32),
        max_context=args.max_context,
        trust_remote_code=args.trust_remote_code,
        graph=args.graph,
        int4_scheme=args.int4_scheme,
        head_bits=args.head_bits,
        calibrate=args.calibrate,
        overwrite=args.force,
    )
    quiet_libraries()
    manifest = convert(args.source, args.output, options, stderr_progress())
    size = sum(f.size for f in manifest.files.values())
    print(f"{args.output}: {manifest.quantization.method}, {size / 1e6:.1f} MB, verified")
    return 0


def quiet_libraries() -> None:
    """Keep library warnings off the terminal; errors still surface as exceptions."""
    import os
    import sys
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    if not sys.stderr.isatty():  # plain lines only: no tqdm bars in logs
        os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's own bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
