"""Find each stack's memory floor: the smallest cgroup limit at which it still decodes at speed.

    python benchmarks/memory_floor.py --model all --json benchmarks/results/memory_floor.json
    python benchmarks/memory_floor.py --model qwen --stack edge --edge off --edge profile

A board feels memory as a limit on everything the service holds: its anonymous memory and
the page cache it reads (model files, libraries), all charged to its cgroup. For each stack
(edge-runtime under each ``--edge`` memory policy, onnxruntime-genai, llama.cpp) this runs
the benchmark's adapter in a fresh process inside a cgroup v1 memory group, with the page
cache dropped before every run:

1. unconstrained (no limit) ``--baseline-runs`` times: the median decode speed is the
   reference, and the group's peak usage is where the search starts;
2. a binary search over the limit in steps of ``--step`` MB (from ``--from-mb``, default 0,
   up to ``--to-mb`` or the unconstrained peak usage): a limit passes when the run
   finishes and decodes at >= ``--keep`` (0.9) of the reference speed, which is that of an
   unconstrained run of the same stack right before it (so that a shared host's drift
   cancels); a run that is slower is tried once more, with a new reference. A run is
   stopped after ``--timeout-factor`` times the reference run's wall time (at least
   ``--min-timeout`` s).

The floor is the smallest passing limit. Stacks take turns probe by probe, so drift on a
shared machine hits them alike. edge-runtime loads through its optimized-graph cache (built
by an unconstrained warm-up run), as the daemon does after its first start. Needs root and
the cgroup v1 memory controller.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cgroup, report, sources
from benchmarks.machine import machine_info
from benchmarks.run import PROMPT_FILE, StackPlan, plan_stacks, prompt_ids
from benchmarks.stacks.common import RESULT_PREFIX

PASS, SLOW, KILLED, TIMEOUT, FAILED = "ok", "slow", "killed", "timeout", "failed"
PREPACKED = "prepacked"


@dataclass(frozen=True)
class Contender:
    """One stack as it runs in every probe: the plan plus the adapter's extra arguments."""

    label: str
    plan: StackPlan
    args: tuple[str, ...] = ()


@dataclass
class Probe:
    """One run under one limit (None: no limit)."""

    limit_mb: int | None
    outcome: str
    decode_tps: float = 0.0
    reference_tps: float = 0.0
    ratio: float = 0.0
    peak_rss_mb: float = 0.0
    group_peak_mb: float = 0.0
    seconds: float = 0.0
    note: str = ""


@dataclass
class Search:
    """The floor search of one contender: invariant ``lo`` fails, ``hi`` passes."""

    contender: Contender
    baseline: list[Probe] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    lo: int = 0
    hi: int = 0

    @property
    def reference_tps(self) -> float:
        speeds = [p.decode_tps for p in self.baseline if p.outcome == PASS]
        return statistics.median(speeds) if speeds else 0.0

    def done(self, step: int) -> bool:
        return self.reference_tps == 0.0 or self.hi - self.lo <= step

    def next_limit(self, step: int) -> int:
        middle = (self.lo + self.hi) // 2
        return max(self.lo + step, middle // step * step)

    def below_floor(self) -> Probe | None:
        """The probe just under the floor: what a board one step short would see."""
        failed = [p for p in self.probes if p.outcome != PASS and p.limit_mb == self.lo]
        return failed[-1] if failed else None


def _edge_contenders(plan: StackPlan, specs: list[str], cache: Path,
                     threads: int) -> list[Contender]:
    """One edge-runtime contender per memory policy spec, each with its own graph cache.

    A spec may add ``prepacked``: the cache entry then holds ONNX Runtime's prepacked
    weights (benchmarks/prepacked.py).
    """
    from benchmarks.prepacked import build_entry
    from benchmarks.stacks.edge import memory_policy

    found = []
    for spec in specs:
        tokens = [t for t in spec.split(",") if t and t != PREPACKED]
        prepacked = PREPACKED in spec.split(",")
        named = ",".join(tokens)
        policy = memory_policy(None if named in ("profile", "") else named)
        names = ",".join(policy.names) or "off"
        folder = cache / f"{plan.quant}-{names}{'-prepacked' if prepacked else ''}"
        if prepacked:
            build_entry(plan.model_path, folder, threads)
        args = ("--memory", names, "--ort-cache", str(folder))
        shown = named if named in ("profile", "off") else names
        label = f"{plan.label} [{shown}{' + prepacked' if prepacked else ''}]"
        found.append(Contender(label, plan, args))
    return found


def contenders(spec: sources.ModelSpec, args: argparse.Namespace, cache: Path,
               skipped: list[str]) -> list[Contender]:
    """Return the stacks this run compares on ``spec``."""
    names = {report.EDGE: "edge", report.GENAI: "genai", report.LLAMA: "llama"}
    found: list[Contender] = []
    for plan in plan_stacks(spec, ["int4"], skipped):
        if names[plan.stack] not in args.stack:
            continue
        if plan.stack == report.EDGE:
            found += _edge_contenders(plan, args.edge, cache, args.threads)
        else:
            found.append(Contender(plan.label, plan))
    return found


def _command(contender: Contender, prompt_file: Path, args: argparse.Namespace) -> list[str]:
    plan = contender.plan
    return [str(plan.python), "-m", plan.module, "--model-path", str(plan.model_path),
            "--prompt-file", str(prompt_file), "--threads", str(args.threads),
            "--max-new", str(args.max_new), *contender.args]


def run_once(contender: Contender, limit_mb: int | None, prompt_file: Path,
             args: argparse.Namespace, timeout_s: float, reference: float) -> Probe:
    """Drop the page cache, run the contender once under ``limit_mb``, and judge the run."""
    env = dict(os.environ, PYTHONPATH=str(sources.REPO), TQDM_DISABLE="1",
               OMP_NUM_THREADS=str(args.threads))
    cgroup.drop_page_cache()
    with cgroup.MemoryGroup(f"edge-floor-{os.getpid()}", limit_mb) as group:
        out = group.run(_command(contender, prompt_file, args), env, sources.REPO, timeout_s)
    probe = Probe(limit_mb, FAILED, group_peak_mb=out.max_usage_mb, seconds=out.seconds)
    result = _result(out.stdout)
    if out.returncode is None:
        probe.outcome = TIMEOUT
    elif result is None:
        killed = out.oom_kills > 0 or out.returncode in (-9, 137)
        probe.outcome = KILLED if killed else FAILED
        probe.note = "" if killed else " / ".join(out.stderr.strip().splitlines()[-2:])
    else:
        probe.decode_tps = result["decode_tps"]
        probe.peak_rss_mb = result["peak_rss_mb"]
        probe.reference_tps = reference
        probe.ratio = probe.decode_tps / reference if reference else 1.0
        probe.outcome = PASS if probe.ratio >= args.keep else SLOW
    return probe


def _result(stdout: str) -> dict[str, float] | None:
    """The adapter's decode speed and peak RSS, from its result line."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX):])
            return {key: float(data[key]) for key in ("decode_tps", "peak_rss_mb")}
    return None


def _timeout(search: Search, args: argparse.Namespace) -> float:
    wall = max((p.seconds for p in search.baseline if p.outcome == PASS), default=0.0)
    return max(args.min_timeout, args.timeout_factor * wall)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _show(search: Search, probe: Probe) -> None:
    limit = "no limit" if probe.limit_mb is None else f"{probe.limit_mb} MB"
    _progress(f"  {search.contender.label} @ {limit}: {probe.outcome} "
              f"{probe.decode_tps:.1f} tok/s ({probe.ratio:.2f}x), group peak "
              f"{probe.group_peak_mb:.0f} MB, {probe.seconds:.0f} s {probe.note}")


def _baseline(searches: list[Search], prompt_file: Path, args: argparse.Namespace) -> None:
    """Warm each contender up once, then measure it unconstrained, taking turns."""
    for search in searches:
        warm = run_once(search.contender, None, prompt_file, args, args.warmup_timeout, 0.0)
        _show(search, warm)
    for _ in range(args.baseline_runs):
        for search in searches:
            probe = run_once(search.contender, None, prompt_file, args, args.warmup_timeout, 0.0)
            search.baseline.append(probe)
            _show(search, probe)
    for search in searches:
        peak = max((p.group_peak_mb for p in search.baseline), default=0.0)
        search.hi = int(-(-peak // args.step) * args.step) + args.step
        if args.to_mb:
            search.hi = min(search.hi, -(-args.to_mb // args.step) * args.step)
        search.lo = min(args.from_mb // args.step * args.step, search.hi - args.step)


def _reference(search: Search, prompt_file: Path, args: argparse.Namespace) -> float:
    """The speed to compare a probe with: an unconstrained run right before it (``--paired``),
    else the median of the unconstrained runs."""
    if not args.paired:
        return search.reference_tps
    run = run_once(search.contender, None, prompt_file, args, _timeout(search, args), 0.0)
    return run.decode_tps if run.outcome == PASS else search.reference_tps


def _probe(search: Search, limit: int, prompt_file: Path, args: argparse.Namespace) -> None:
    timeout = _timeout(search, args)
    reference = _reference(search, prompt_file, args)
    probe = run_once(search.contender, limit, prompt_file, args, timeout, reference)
    _show(search, probe)
    if probe.outcome == SLOW:  # this host's speed swings: one more try before judging
        search.probes.append(probe)
        reference = _reference(search, prompt_file, args)
        probe = run_once(search.contender, limit, prompt_file, args, timeout, reference)
        _show(search, probe)
    search.probes.append(probe)
    if probe.outcome == PASS:
        search.hi = limit
    else:
        search.lo = limit


def find_floors(searches: list[Search], prompt_file: Path, args: argparse.Namespace) -> None:
    """Binary-search every contender's floor, one probe per contender per round."""
    _baseline(searches, prompt_file, args)
    while True:
        active = [s for s in searches if not s.done(args.step)]
        if not active:
            return
        for search in active:
            _probe(search, search.next_limit(args.step), prompt_file, args)


def summary(search: Search, step: int) -> dict[str, object]:
    """Return one contender's figures as plain data."""
    below = search.below_floor()
    ok = [p for p in search.baseline if p.outcome == PASS]
    return {
        "label": search.contender.label,
        "stack": search.contender.plan.stack,
        "model_path": str(search.contender.plan.model_path),
        "adapter_args": list(search.contender.args),
        "reference_decode_tps": search.reference_tps,
        "peak_rss_mb": statistics.median([p.peak_rss_mb for p in ok]) if ok else 0.0,
        "unconstrained_group_peak_mb": max((p.group_peak_mb for p in ok), default=0.0),
        "floor_mb": search.hi if search.reference_tps else None,
        "step_mb": step,
        "below_floor": asdict(below) if below else None,
        "baseline": [asdict(p) for p in search.baseline],
        "probes": [asdict(p) for p in search.probes],
    }


def _below_text(row: dict[str, object]) -> str:
    below = row["below_floor"]
    if not isinstance(below, dict):
        return "not run (--from-mb)"
    if below["outcome"] == SLOW:
        return f"{below['limit_mb']} MB: {below['decode_tps']:.1f} tok/s ({below['ratio']:.2f}x)"
    return f"{below['limit_mb']} MB: {below['outcome']}"


def floor_table(rows: list[dict[str, object]]) -> str:
    """Return the floors as a Markdown table."""
    lines = ["| stack | decode tok/s, no limit | peak RSS MB | group peak MB, no limit "
             "| floor MB | one step below |", "|---|---|---|---|---|---|"]
    for row in rows:
        floor = row["floor_mb"]
        lines.append(
            f"| {row['label']} | {float(row['reference_decode_tps']):.1f} "  # type: ignore[arg-type]
            f"| {float(row['peak_rss_mb']):.0f} "  # type: ignore[arg-type]
            f"| {float(row['unconstrained_group_peak_mb']):.0f} "  # type: ignore[arg-type]
            f"| {floor if floor is not None else 'n/a'} | {_below_text(row)} |"
        )
    return "\n".join(lines)


def _model_prompt(spec: sources.ModelSpec, work: Path) -> Path:
    ids = prompt_ids(spec, ["int4"])
    path = work / f"prompt-{spec.key}.json"
    path.write_text(json.dumps({"text": PROMPT_FILE.read_text(), "ids": ids}))
    return path


def floor_model(spec: sources.ModelSpec, args: argparse.Namespace,
                work: Path) -> dict[str, object]:
    """Find the floor of every stack on ``spec``."""
    skipped: list[str] = []
    searches = [Search(c) for c in contenders(spec, args, work / "ort-cache", skipped)]
    prompt_file = _model_prompt(spec, work)
    _progress(f"[{spec.key}] {len(searches)} stacks: "
              + ", ".join(s.contender.label for s in searches))
    find_floors(searches, prompt_file, args)
    rows = [summary(s, args.step) for s in searches]
    return {"model": spec.title, "rows": rows, "skipped": skipped, "table": floor_table(rows)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*sources.MODELS, "all"], default="all")
    parser.add_argument("--stack", action="append", choices=["edge", "genai", "llama"])
    parser.add_argument("--edge", action="append", metavar="POLICY",
                        help="edge-runtime memory policy: 'profile' (the detected device "
                             "profile's, as the daemon), 'off', or lever names joined by commas, "
                             "each optionally with ',prepacked'; repeat to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--step", type=int, default=16, help="MB")
    parser.add_argument("--from-mb", type=int, default=0,
                        help="take limits up to this as failing without running them "
                             "(saves probes where a floor is known to lie higher)")
    parser.add_argument("--to-mb", type=int, default=0,
                        help="take limits from this up as passing without running them "
                             "(saves probes where a floor is known to lie lower)")
    parser.add_argument("--keep", type=float, default=0.9,
                        help="share of the unconstrained decode speed a limit must keep")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                        help="compare each probe with an unconstrained run just before it "
                             "(default), rather than with the median of the first runs")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    parser.add_argument("--min-timeout", type=float, default=60.0)
    parser.add_argument("--warmup-timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    args.stack = args.stack or ["edge", "genai", "llama"]
    args.edge = args.edge or ["profile"]
    return args


def _models(choice: str) -> Iterator[sources.ModelSpec]:
    yield from (sources.MODELS.values() if choice == "all" else [sources.MODELS[choice]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not cgroup.available():
        print(f"needs root and a cgroup v1 memory controller at {cgroup.ROOT}", file=sys.stderr)
        return 2
    results: dict[str, object] = {"machine": machine_info(), "argv": sys.argv,
                                  "page_cache": cgroup.drop_page_cache(), "models": {}}
    text = [f"Machine: `{json.dumps(results['machine'])}`; page cache: {results['page_cache']}\n"]
    with tempfile.TemporaryDirectory(prefix="edge-floor-") as tmp:
        for spec in _models(args.model):
            data = floor_model(spec, args, Path(tmp))
            results["models"][spec.key] = data  # type: ignore[index]
            notes = "".join(f"\n- note: {n}" for n in data["skipped"])  # type: ignore[attr-defined]
            text.append(f"### {spec.title}\n\n{data['table']}\n{notes}\n")
            print(text[-1], flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(text))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
