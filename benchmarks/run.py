"""Run edge-runtime, onnxruntime-genai and llama.cpp side by side on the same model.

    python benchmarks/run.py --model qwen --runs 3 --threads 2 --json benchmarks/results/qwen.json

Every run is a fresh subprocess (so load time and peak RSS are per stack) and runs alternate
between stacks (A B C A B C ...). All stacks get the same prompt token ids and generate
exactly ``--max-new`` tokens greedily. The anchors run in the venv that
``benchmarks/anchors/setup.sh`` builds; a stack whose files are missing is skipped, and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report, sources
from benchmarks.machine import machine_info
from benchmarks.stacks.common import RESULT_PREFIX

PROMPT_FILE = sources.PROMPT_FILE
RUN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class StackPlan:
    """How to run one stack on one model file."""

    label: str
    stack: str
    python: Path
    module: str
    model_path: Path
    quant: str
    args: tuple[str, ...] = ()
    repo: Path | None = None
    """The source tree to run the stack from (default: this checkout)."""


def _anchor_ok(module: str) -> bool:
    python = sources.anchor_python()
    if not python.is_file():
        return False
    check = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
    return check.returncode == 0


def _without_huge_pages() -> tuple[str, ...]:
    """The edge adapter's arguments for the device profile's memory policy less huge pages."""
    import devices

    levers = [name for name in devices.detect().memory if name != "huge_pages"]
    return ("--memory", ",".join(levers) or "off")


def plan_stacks(spec: sources.ModelSpec, quants: list[str], skipped: list[str],
                huge_pages: str = "on") -> list[StackPlan]:
    """Return the stacks that can run on this machine, noting the ones that cannot."""
    plans = []
    for quant in quants:
        bundle = sources.bundle_path(spec, quant)
        if (bundle / "manifest.json").is_file():
            edge = StackPlan(f"edge-runtime {quant}", report.EDGE, Path(sys.executable),
                             "benchmarks.stacks.edge", bundle, quant)
            small_pages = StackPlan(f"{edge.label}, 4K pages", report.EDGE, edge.python,
                                    edge.module, bundle, quant, _without_huge_pages())
            plans += {"on": [edge], "off": [small_pages], "both": [edge, small_pages]}[huge_pages]
        else:
            skipped.append(f"edge-runtime {quant}: no bundle at {bundle}")
    genai = sources.genai_model_path(spec)
    if not (genai / "genai_config.json").is_file():
        skipped.append(f"onnxruntime-genai: no model at {genai} (run benchmarks/anchors/setup.sh)")
    elif not _anchor_ok("onnxruntime_genai"):
        skipped.append("onnxruntime-genai: anchor venv missing (run benchmarks/anchors/setup.sh)")
    else:
        plans.append(StackPlan(report.GENAI, report.GENAI, sources.anchor_python(),
                               "benchmarks.stacks.genai", genai, "int4 (builder default)"))
    if not _anchor_ok("llama_cpp"):
        skipped.append("llama.cpp: anchor venv has no llama_cpp (run benchmarks/anchors/setup.sh)")
    else:
        plans.append(StackPlan(report.LLAMA, report.LLAMA, sources.anchor_python(),
                               "benchmarks.stacks.llamacpp", sources.gguf_path(spec),
                               spec.gguf_quant))
    return plans


def prompt_ids(spec: sources.ModelSpec, quants: list[str]) -> list[int]:
    """Tokenize the fixed prompt with the edge bundle's tokenizer (else the HF folder's)."""
    text = PROMPT_FILE.read_text()
    for quant in quants:
        tokenizer_file = sources.bundle_path(spec, quant) / "tokenizer.json"
        if tokenizer_file.is_file():
            break
    else:
        tokenizer_file = sources.hf_dir(spec) / "tokenizer.json"
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(tokenizer_file)).encode(text, add_special_tokens=False).ids)


def run_stack(plan: StackPlan, prompt_file: Path, args: argparse.Namespace,
              streams: int = 1) -> dict[str, object]:
    """Run one measurement in a fresh interpreter and return its result (or the error)."""
    cmd = [str(plan.python), "-m", plan.module, "--model-path", str(plan.model_path),
           "--prompt-file", str(prompt_file), "--threads", str(args.threads),
           "--max-new", str(args.max_new), "--streams", str(streams), *plan.args]
    repo = plan.repo or sources.REPO
    env = dict(os.environ, PYTHONPATH=str(repo), TQDM_DISABLE="1",
               OMP_NUM_THREADS=str(args.threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {RUN_TIMEOUT_S} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX):]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " / ".join(tail)}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_model(spec: sources.ModelSpec, args: argparse.Namespace, work: Path) -> dict[str, object]:
    """Measure every available stack on ``spec``; return medians, ratios and targets."""
    skipped: list[str] = []
    plans = plan_stacks(spec, args.quant, skipped, args.huge_pages)
    ids = prompt_ids(spec, args.quant)
    prompt_file = work / f"prompt-{spec.key}.json"
    prompt_file.write_text(json.dumps({"text": PROMPT_FILE.read_text(), "ids": ids}))
    summaries = {p.label: report.StackSummary(p.label, p.stack, str(p.model_path),
                                              sources.dir_size(p.model_path) / 1e6, p.quant)
                 for p in plans}
    errors: list[str] = []
    for index in range(args.runs):
        for plan in plans:
            _progress(f"[{spec.key}] run {index + 1}/{args.runs}: {plan.label}")
            result = run_stack(plan, prompt_file, args)
            if "error" in result:
                errors.append(f"{plan.label} run {index + 1}: {result['error']}")
                _progress(f"  failed: {result['error']}")
                continue
            summaries[plan.label].runs.append(result)
    return _assemble(spec, args, plans, summaries, ids, prompt_file, skipped, errors)


def _assemble(spec: sources.ModelSpec, args: argparse.Namespace, plans: list[StackPlan],
              summaries: dict[str, report.StackSummary], ids: list[int], prompt_file: Path,
              skipped: list[str], errors: list[str]) -> dict[str, object]:
    ran = [s for s in summaries.values() if s.runs]
    edges = [s for s in ran if s.stack == report.EDGE]
    anchors = {s.stack: s for s in ran if s.stack != report.EDGE}
    gguf_mb = sources.gguf_path(spec).stat().st_size / 1e6
    targets = [row for e in edges for row in report.evaluate(e, anchors, gguf_mb)]
    out: dict[str, object] = {
        "model": spec.title, "gguf_quant": spec.gguf_quant, "gguf_mb": gguf_mb,
        "prompt_tokens": len(ids),
        "stacks": [s.to_dict() for s in ran], "targets": targets, "skipped": skipped,
        "errors": errors, "agreement": _agreement(ran),
        "tables": {"stacks": report.stacks_table(ran),
                   "ratios": report.ratios_table(edges, anchors),
                   "targets": report.targets_table(targets)},
    }
    int4 = next((p for p in plans if p.stack == report.EDGE and p.quant == "int4"), None)
    if args.streams > 1 and int4 is not None:
        _progress(f"[{spec.key}] {args.streams} concurrent streams: {int4.label}")
        result = run_stack(int4, prompt_file, args, streams=args.streams)
        extra = result.get("extra", {})
        if "error" in result or not isinstance(extra, dict) or "decode_speedup" not in extra:
            errors.append(f"streams: {result.get('error', 'no figures')}")
        else:
            out["streams"] = extra
            out["tables"]["streams"] = report.streams_table(extra)  # type: ignore[index]
    if args.quality:
        out["quality"] = _quality(spec, args, prompt_file.parent)
    return out


def _quality(spec: sources.ModelSpec, args: argparse.Namespace,
             work: Path) -> list[dict[str, object]] | str:
    """Run the quality guard for ``spec`` in a fresh interpreter."""
    if not (sources.bundle_path(spec, "fp32") / "manifest.json").is_file():
        return f"no fp32 bundle at {sources.bundle_path(spec, 'fp32')}"
    _progress(f"[{spec.key}] quality guard")
    out = work / f"quality-{spec.key}.json"
    cmd = [sys.executable, str(sources.REPO / "benchmarks" / "quality.py"), "--model", spec.key,
           "--threads", str(args.threads), "--json", str(out)]
    for quant in args.quant:
        if quant != "fp32":
            cmd += ["--quant", quant]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=sources.REPO)
    if proc.returncode != 0 or not out.is_file():
        return f"quality failed: {proc.stderr.strip().splitlines()[-1:]}"
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def _agreement(ran: list[report.StackSummary]) -> dict[str, int]:
    """Return, per stack, how many leading greedy tokens match the first edge run's."""
    base = next((s for s in ran if s.stack == report.EDGE), None)
    if base is None:
        return {}
    first = _tokens(base.runs[0])
    return {s.label: report.agreement(first, _tokens(s.runs[0])) for s in ran}


def _tokens(run: dict[str, object]) -> list[int]:
    ids = run.get("token_ids", [])
    return [int(t) for t in ids] if isinstance(ids, list) else []


def model_report(data: dict[str, object]) -> str:
    """Return one model's tables and notes as Markdown."""
    tables = data["tables"]
    assert isinstance(tables, dict)
    parts = [f"### {data['model']} (prompt {data['prompt_tokens']} tokens)\n"]
    parts += [tables[name] + "\n" for name in ("stacks", "ratios", "targets", "streams")
              if name in tables]
    quality = data.get("quality")
    if isinstance(quality, list) and quality:
        from benchmarks.quality import quality_table

        parts.append(quality_table(quality) + "\n")
    elif quality:
        parts.append(f"quality: {quality}\n")
    parts.append(f"Greedy tokens shared with edge-runtime's first run: {data['agreement']}\n")
    parts += [f"- note: {note}" for note in [*data["skipped"], *data["errors"]]]  # type: ignore[misc]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*sources.MODELS, "all"], default="all")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--quant", action="append", choices=sources.QUANTS,
                        help="edge-runtime bundles to run (default: int4 and int8)")
    parser.add_argument("--streams", type=int, default=4,
                        help="concurrent streams for the int4 bundle (1 skips it)")
    parser.add_argument("--quality", action="store_true",
                        help="also run the quality guard (int4/int8 against fp32)")
    parser.add_argument("--huge-pages", choices=["on", "off", "both"], default="on",
                        help="run edge-runtime with the device profile's memory policy (on), "
                             "the same without huge pages (off), or both, alternating")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the printed tables here too")
    args = parser.parse_args(argv)
    args.quant = args.quant or ["int4", "int8"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(sources.MODELS) if args.model == "all" else [args.model]
    results: dict[str, object] = {"machine": machine_info(), "argv": sys.argv, "models": {}}
    text = [f"Machine: `{json.dumps(results['machine'])}`\n"]
    print(text[0])
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        for key in keys:
            data = bench_model(sources.MODELS[key], args, Path(tmp))
            results["models"][key] = data  # type: ignore[index]
            text.append(model_report(data))
            print(text[-1], flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(text))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
