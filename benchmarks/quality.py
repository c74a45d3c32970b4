"""Quality guard: a quantized bundle against the fp32 bundle of the same model.

    python benchmarks/quality.py --model smollm2 [--quant int4] [--json out.json]

Each text in ``benchmarks/data/quality/`` is fed one token at a time through edge-runtime's
runner (teacher forcing: the true next token goes in whatever the model predicted). At each
position both bundles' top-1 predictions are compared, and each bundle's perplexity on the
true next tokens is computed. Targets: top-1 agreement >= 90 %, perplexity within 10 %.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import sources
from benchmarks.report import markdown_table
from edge_runtime.engine import EngineOptions, load_engine

TEXTS = sources.REPO / "benchmarks" / "data" / "quality"
AGREEMENT_TARGET = 0.90
PPL_TOLERANCE = 0.10


@dataclass(frozen=True)
class Forced:
    """Per-position results of teacher forcing one bundle over the text set."""

    top1: np.ndarray  # predicted next token at each position
    nll: np.ndarray  # negative log-likelihood of the true next token


def load_texts(directory: Path = TEXTS) -> list[str]:
    """Return the fixed texts, in file-name order."""
    return [p.read_text() for p in sorted(directory.glob("*.txt"))]


def _log_softmax_at(logits: np.ndarray, index: int) -> float:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return float(shifted[index] - math.log(float(np.exp(shifted).sum())))


def teacher_force(bundle: Path, texts: list[str], threads: int) -> Forced:
    """Feed every text token by token and record top-1 and the true token's NLL."""
    engine = load_engine(bundle, EngineOptions(provider="cpu", threads=threads))
    top1: list[int] = []
    nll: list[float] = []
    for text in texts:
        ids = engine.tokenizer.encode(text)
        sequence = engine.single_sequence()
        sequence.reset(len(ids))
        for position, token in enumerate(ids[:-1]):
            logits = sequence.forward([token])
            top1.append(int(np.argmax(logits)))
            nll.append(-_log_softmax_at(logits, ids[position + 1]))
    return Forced(np.array(top1), np.array(nll))


def compare(quant: Forced, reference: Forced) -> dict[str, float | int | bool]:
    """Return agreement, both perplexities, their ratio and whether the targets are met."""
    if quant.top1.shape != reference.top1.shape:
        raise ValueError("the bundles tokenized the texts differently")
    agreement = float(np.mean(quant.top1 == reference.top1))
    ppl_q = math.exp(float(np.mean(quant.nll)))
    ppl_r = math.exp(float(np.mean(reference.nll)))
    ratio = ppl_q / ppl_r
    return {
        "positions": int(quant.top1.size),
        "top1_agreement": agreement,
        "ppl": ppl_q,
        "ppl_reference": ppl_r,
        "ppl_ratio": ratio,
        "agreement_met": agreement >= AGREEMENT_TARGET,
        "ppl_met": abs(ratio - 1.0) <= PPL_TOLERANCE,
    }


def quality_table(rows: list[dict[str, object]]) -> str:
    """Return the quality figures as a Markdown table."""
    header = ["model", "bundle", "positions", "top-1 agreement", "ppl", "ppl fp32",
              "ppl ratio", "agreement >= 90%", "ppl within 10%"]
    body = [[
        str(r["model"]), str(r["quant"]), str(r["positions"]),
        f"{float(r['top1_agreement']) * 100:.1f}%",  # type: ignore[arg-type]
        f"{float(r['ppl']):.3f}", f"{float(r['ppl_reference']):.3f}",  # type: ignore[arg-type]
        f"{float(r['ppl_ratio']):.3f}",  # type: ignore[arg-type]
        "met" if r["agreement_met"] else "MISSED", "met" if r["ppl_met"] else "MISSED",
    ] for r in rows]
    return markdown_table(header, body)


def run(model: str, quants: list[str], reference: Path | None, threads: int,
        extra: tuple[Path, ...] = ()) -> list[dict[str, object]]:
    """Measure each quantized bundle of ``model`` (and any ``extra`` one) against fp32."""
    spec = sources.MODELS[model]
    texts = load_texts()
    ref_path = reference or sources.bundle_path(spec, "fp32")
    ref = teacher_force(ref_path, texts, threads)
    rows: list[dict[str, object]] = []
    candidates = [(q, sources.bundle_path(spec, q)) for q in quants]
    candidates += [(p.name, p) for p in extra]
    for quant, path in candidates:
        if not (path / "manifest.json").is_file():
            print(f"skip {model} {quant}: no bundle at {path}", file=sys.stderr)
            continue
        figures = compare(teacher_force(path, texts, threads), ref)
        rows.append({"model": spec.title, "quant": quant, "bundle": str(path),
                     "reference": str(ref_path), **figures})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*sources.MODELS, "all"], default="all")
    parser.add_argument("--quant", action="append",
                        choices=[q for q in sources.QUANTS if q != "fp32"])
    parser.add_argument("--reference", type=Path, help="fp32 bundle (default: by name)")
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="another bundle of the same model to compare (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    keys = list(sources.MODELS) if args.model == "all" else [args.model]
    rows: list[dict[str, object]] = []
    for key in keys:
        ref = sources.bundle_path(sources.MODELS[key], "fp32")
        if args.reference is None and not (ref / "manifest.json").is_file():
            print(f"skip {key}: no fp32 bundle at {ref}", file=sys.stderr)
            continue
        rows += run(key, args.quant or ["int4"], args.reference, args.threads,
                    tuple(args.bundle))
    print(quality_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
