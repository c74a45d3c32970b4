"""Two edge-runtime bundles (or two code trees), alternating in fresh processes: is B faster?

    python benchmarks/ab.py OLD_BUNDLE NEW_BUNDLE --pairs 6 --json benchmarks/results/ab.json
    python benchmarks/ab.py BUNDLE BUNDLE --code OLD_TREE NEW_TREE --pairs 6   # code A/B
    python benchmarks/ab.py BUNDLE BUNDLE --memory trim_heap trim_heap,huge_pages  # a lever

With ``--memory`` each side loads under its own memory policy (lever names joined by commas,
or ``off``). With ``--code`` each side runs from its own source tree (a git worktree of the
commit to compare, ``git worktree add /tmp/old <commit>``), on the same bundle.

Each pair runs both bundles once, in turns (A B, then B A, ...), through the benchmark's
edge-runtime stack: same prompt (tokenized by A's tokenizer), 128 greedy tokens, the same
threads. On a shared host the speed of either swings by several percent from one minute to
the next; the median of the per-pair ratios cancels most of that, where two separate runs
would not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from benchmarks.run import PROMPT_FILE, StackPlan, run_stack

FIGURES = ("decode_tps", "prefill_tps", "peak_rss_mb", "load_s")


def _prompt_file(bundle: Path, work: Path) -> Path:
    from tokenizers import Tokenizer

    text = PROMPT_FILE.read_text()
    ids = Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids
    path = work / "prompt.json"
    path.write_text(json.dumps({"text": text, "ids": list(ids)}))
    return path


def _figure(run: dict[str, object], name: str) -> float:
    return float(run[name])  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--code", type=Path, nargs=2, metavar=("TREE_A", "TREE_B"),
                        help="run A and B from these source trees")
    parser.add_argument("--memory", nargs=2, metavar=("POLICY_A", "POLICY_B"),
                        help="load A and B under these memory policies")
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.code] if args.code else [None, None]
    memory = [("--memory", spec) for spec in args.memory] if args.memory else [(), ()]
    plans = [StackPlan(f"{side}: {path} {' '.join(extra)}".strip(), report.EDGE,
                       Path(sys.executable), "benchmarks.stacks.edge", path.resolve(), "",
                       extra, repo=tree)
             for side, path, tree, extra in zip("AB", (args.a, args.b), trees, memory,
                                                strict=True)]
    runs: dict[str, list[dict[str, object]]] = {p.label: [] for p in plans}
    with tempfile.TemporaryDirectory() as tmp:
        prompt = _prompt_file(args.a, Path(tmp))
        for index in range(args.pairs):
            for plan in plans if index % 2 == 0 else plans[::-1]:
                result = run_stack(plan, prompt, args)
                if "error" in result:
                    print(f"{plan.label}: {result['error']}", file=sys.stderr)
                    return 1
                runs[plan.label].append(result)
                print(f"pair {index + 1}/{args.pairs} {plan.label}: "
                      f"{_figure(result, 'decode_tps'):.1f} tok/s", file=sys.stderr)
    a, b = (runs[p.label] for p in plans)
    out: dict[str, object] = {"a": str(args.a), "b": str(args.b), "pairs": args.pairs}
    print("| figure | A median | B median | B/A, median of pairs |\n|---|---|---|---|")
    for name in FIGURES:
        va, vb = [_figure(r, name) for r in a], [_figure(r, name) for r in b]
        ratio = statistics.median(y / x for x, y in zip(va, vb, strict=True))
        out[name] = {"a": va, "b": vb, "ratio_median": ratio}
        print(f"| {name} | {statistics.median(va):.2f} | {statistics.median(vb):.2f} "
              f"| {ratio:.3f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**out, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
