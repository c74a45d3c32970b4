"""Prefix cache: time to first token with a shared system prompt, two alternating users and a
conversation, edge-runtime (cache off and on) against llama.cpp reusing its prefixes.

    python benchmarks/prefix_cache.py [--model qwen] [--quant int4] [--threads 2]
        [--cache-mb 128] [--pause 2] [--json benchmarks/results/prefix_cache.json] [--no-daemon]

One persistent worker process per stack (benchmarks/stacks/edge_prefix.py, llamacpp_prefix.py
in the anchor venv, same GGUF the bundle was converted from), driven with the same token ids:
this script renders every prompt with the bundle's chat template and tokenizer. A
conversation's later turns carry each stack's own earlier answers, as a chat client sends
them. Scenarios run one after the other, each stack in turn, each from an empty cache:

- ``system``: a 600-token system prompt with a 20-token question, then another question.
- ``alternating``: two users with different 600-token system prompts, A B A B A B.
- ``conversation``: five turns on the first system prompt, answers of up to 48 tokens, with
  ``--pause`` seconds between an answer and the next question (a person reading it and
  typing); ``conversation, back to back`` the same with no pause. edge-runtime reads an
  answer again in that pause to keep it exactly (docs/engine.md, "Prefix cache"); back to
  back, the next turn reads what is left of it with its question.

Each cached request's time to first token is set against the cold time of the same prompt
(edge-runtime with the cache off). ``--daemon`` repeats ``system`` through ``edge-runtime
serve`` over a real Mosquitto on loopback, timed at the client (publish to first chunk).
The memory the cache adds at its bound: both edge workers read the same distinct prompts
until the cache has evicted, and their peak resident sets are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import sources  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from edge_runtime.bundle import read_manifest  # noqa: E402
from edge_runtime.engine.chat_template import ChatTemplate  # noqa: E402
from edge_runtime.engine.prompt import encode_request  # noqa: E402
from edge_runtime.engine.request import GenerationRequest, Message  # noqa: E402
from edge_runtime.engine.tokenizer import Tokenizer  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "prefix"
SYSTEM_TOKENS = 600
ANSWER_TOKENS = 48
TURNS = 5
EDGE_OFF, EDGE_ON, LLAMA = "edge-runtime, no cache", "edge-runtime", "llama.cpp"
CONVERSATION, BACK_TO_BACK = "conversation", "conversation, back to back"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Prompts ------------------------------------------------------------------------------------


@dataclass
class Prompts:
    """The bundle's tokenizer and template, and the texts every scenario uses."""

    tokenizer: Tokenizer
    template: ChatTemplate
    systems: list[str]
    questions: list[str]

    @classmethod
    def load(cls, bundle: Path) -> Prompts:
        manifest = read_manifest(bundle)
        arch = manifest.architecture
        tokenizer = Tokenizer(bundle / manifest.tokenizer_file, bos_id=arch.bos_token_id,
                              add_bos=arch.add_bos_token)
        eos = tokenizer.token_text(arch.eos_token_ids[0]) or ""
        template = ChatTemplate.from_file(bundle / str(manifest.chat_template_file),
                                          eos_token=eos)
        systems = [cls._cut((DATA / name).read_text().strip(), tokenizer)
                   for name in ("system_clinic.txt", "system_store.txt")]
        questions = (DATA / "questions.txt").read_text().strip().splitlines()
        return cls(tokenizer, template, systems, questions)

    @staticmethod
    def _cut(text: str, tokenizer: Tokenizer) -> str:
        """The text of the first SYSTEM_TOKENS tokens of ``text``."""
        return tokenizer.decode(tokenizer.encode(text)[:SYSTEM_TOKENS])

    def chat(self, system: str, turns: list[tuple[str, str]], question: str) -> list[int]:
        """Token ids of a chat: system prompt, earlier (question, answer) turns, a question."""
        messages = [Message(role="system", content=system)]
        for asked, answered in turns:
            messages += [Message(role="user", content=asked),
                         Message(role="assistant", content=answered)]
        messages.append(Message(role="user", content=question))
        return encode_request(GenerationRequest(messages=messages), template=self.template,
                              tokenizer=self.tokenizer).ids


# Workers ------------------------------------------------------------------------------------


class Worker:
    """One stack's worker process, spoken to a JSON line at a time."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=env)
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"{name} did not start")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def call(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def generate(self, ids: list[int], max_new: int = ANSWER_TOKENS) -> dict[str, Any]:
        answer = self.call(op="generate", ids=ids, max_new=max_new)
        progress(f"  {self.name}: {len(ids)} tokens, first token after {answer['ttft_s']:.3f} s"
                 f" (cached {answer.get('cached_tokens')}), {answer['new_tokens']} new")
        return answer

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, BrokenPipeError):
            self.call(op="quit")
        self.proc.wait(timeout=60)


def start_workers(args: argparse.Namespace, bundle: Path) -> list[Worker]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    common = ["--threads", str(args.threads)]
    edge = [sys.executable, "-m", "benchmarks.stacks.edge_prefix", "--model-path", str(bundle)]
    workers = [Worker(EDGE_OFF, [*edge, *common, "--cache-mb", "0"], env),
               Worker(EDGE_ON, [*edge, *common, "--cache-mb", str(args.cache_mb)], env)]
    python = sources.anchor_python()
    if args.no_llamacpp or not python.is_file():
        progress(f"llama.cpp skipped ({python} missing: run benchmarks/anchors/setup.sh)"
                 if not args.no_llamacpp else "llama.cpp skipped")
        return workers
    gguf = sources.gguf_path(sources.MODELS[args.model])
    workers.append(Worker(LLAMA, [str(python), "-m", "benchmarks.stacks.llamacpp_prefix",
                                  "--model-path", str(gguf), *common,
                                  "--cache-mb", str(args.cache_mb)], env))
    return workers


# Scenarios ----------------------------------------------------------------------------------


def run_requests(worker: Worker, prompts: list[list[int]]) -> list[dict[str, Any]]:
    worker.call(op="clear")
    return [dict(worker.generate(ids), prompt_tokens=len(ids)) for ids in prompts]


def conversation(worker: Worker, p: Prompts, pause_s: float) -> list[dict[str, Any]]:
    """Five turns on the first system prompt, each with this stack's own earlier answers.

    ``pause_s`` passes between an answer and the next question, as a person reads and types.
    """
    worker.call(op="clear")
    turns: list[tuple[str, str]] = []
    out = []
    for question in p.questions[:TURNS]:
        ids = p.chat(p.systems[0], turns, question)
        answer = worker.generate(ids)
        out.append(dict(answer, prompt_tokens=len(ids)))
        turns.append((question, answer["text"].strip()))
        time.sleep(pause_s)
    return out


def scenarios(
    workers: list[Worker], p: Prompts, pause_s: float
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    a, b = p.systems
    q = p.questions
    fixed = {
        "system": [p.chat(a, [], q[0]), p.chat(a, [], q[1])],
        "alternating": [p.chat(a if i % 2 == 0 else b, [], q[2 + i]) for i in range(6)],
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, prompts in fixed.items():
        results[name] = {}
        for worker in workers:
            progress(f"{name}: {worker.name}")
            results[name][worker.name] = run_requests(worker, prompts)
    for name, pause in ((CONVERSATION, pause_s), (BACK_TO_BACK, 0.0)):
        results[name] = {}
        for worker in workers:
            progress(f"{name}: {worker.name}")
            results[name][worker.name] = conversation(worker, p, pause)
    return results


def memory_at_bound(workers: list[Worker], p: Prompts, cache_mb: int) -> dict[str, Any]:
    """Read distinct prompts in both edge workers until the cache evicts; compare peaks."""
    token_kb = cache_token_kb(p)
    count = int(cache_mb * 1024 / (token_kb * SYSTEM_TOKENS)) + 3
    base = p.tokenizer.encode((DATA / "system_store.txt").read_text())[:SYSTEM_TOKENS - 8]
    prompts = [[*p.tokenizer.encode(f"Visitor {i}:"), *base] for i in range(count)]
    out: dict[str, Any] = {"prompts": count, "prompt_tokens": len(prompts[0])}
    for worker in workers[:2]:
        progress(f"memory at the bound: {worker.name} ({count} prompts)")
        for ids in prompts:
            worker.generate(ids, max_new=1)
        out[worker.name] = worker.call(op="memory")
    out["added_peak_mb"] = out[EDGE_ON]["peak_rss_mb"] - out[EDGE_OFF]["peak_rss_mb"]
    out["added_rss_mb"] = out[EDGE_ON]["rss_mb"] - out[EDGE_OFF]["rss_mb"]
    return out


def cache_token_kb(p: Prompts) -> float:
    manifest = read_manifest(BUNDLE)
    a = manifest.architecture
    width = {"float32": 4, "float16": 2}.get(manifest.graph.kv_dtype, 4)
    return a.num_layers * 2 * a.num_kv_heads * a.head_dim * width / 1024


BUNDLE = Path()


# The daemon over MQTT -----------------------------------------------------------------------


def daemon_system(args: argparse.Namespace, p: Prompts, work: Path) -> list[dict[str, Any]]:
    """The ``system`` scenario through ``edge-runtime serve`` and a loopback Mosquitto."""
    from benchmarks.prefix_mqtt import Loopback

    with Loopback(work, BUNDLE, args.threads, args.cache_mb) as loop:
        out = []
        for question in p.questions[:2]:
            messages = [{"role": "system", "content": p.systems[0]},
                        {"role": "user", "content": question}]
            out.append(loop.ask(messages, ANSWER_TOKENS))
        return out


# Report -------------------------------------------------------------------------------------


def ratio(x: float, y: float) -> float | None:
    return round(x / y, 3) if y > 0 else None


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]],
              daemon: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One row per request: each stack's time to first token and the ratios the issue asks."""
    rows = []
    for scenario, stacks in results.items():
        cold = stacks[EDGE_OFF]
        for i, on in enumerate(stacks[EDGE_ON]):
            row: dict[str, Any] = {
                "scenario": scenario, "request": i + 1, "prompt_tokens": on["prompt_tokens"],
                "cached_tokens": on["cached_tokens"], "cold_ttft_s": cold[i]["ttft_s"],
                "ttft_s": on["ttft_s"], "vs_cold": ratio(on["ttft_s"], cold[i]["ttft_s"]),
                "decode_tps": on["decode_tps"], "cold_decode_tps": cold[i]["decode_tps"],
            }
            if LLAMA in stacks:
                llama = stacks[LLAMA][i]
                row.update(llama_ttft_s=llama["ttft_s"], llama_prompt_tokens=llama["prompt_tokens"],
                           llama_cached_tokens=llama["cached_tokens"],
                           vs_llama=ratio(on["ttft_s"], llama["ttft_s"]))
            rows.append(row)
    daemon = daemon or []
    for i, answer in enumerate(daemon):
        rows.append({"scenario": "system over MQTT", "request": i + 1,
                     "prompt_tokens": answer["prompt_tokens"],
                     "cached_tokens": answer["cached_tokens"], "ttft_s": answer["ttft_s"],
                     "vs_first": ratio(answer["ttft_s"], daemon[0]["ttft_s"])})
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's bounds, each with the figure it is checked against."""
    def pick(scenario: str, request: int) -> dict[str, Any]:
        return next(r for r in rows if r["scenario"] == scenario and r["request"] == request)

    out = []
    first, second = pick("system", 1), pick("system", 2)
    out.append(("system: 2nd TTFT / 1st (engine)", ratio(second["ttft_s"], first["ttft_s"]),
                0.15))
    mqtt = [r for r in rows if r["scenario"] == "system over MQTT"]
    if len(mqtt) == 2:
        out.append(("system: 2nd TTFT / 1st (daemon over MQTT)", mqtt[1]["vs_first"], 0.15))
    alternating = [r["vs_cold"] for r in rows if r["scenario"] == "alternating"
                   and r["request"] > 2]
    out.append(("alternating: worst later TTFT / cold", max(alternating), 0.15))
    for name in (CONVERSATION, BACK_TO_BACK):
        turn5 = pick(name, TURNS)
        if "vs_llama" in turn5:
            out.append((f"{name}: turn 5 TTFT / llama.cpp's", turn5["vs_llama"], 1.0))
    return [{"target": name, "value": value, "bound": bound,
             "met": value is not None and value <= bound} for name, value, bound in out]


def decode_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    on = [r["decode_tps"] for r in rows if r.get("cold_decode_tps")]
    off = [r["cold_decode_tps"] for r in rows if r.get("cold_decode_tps")]
    mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
    return {"cache_on_tps": round(mean_on, 2), "cache_off_tps": round(mean_off, 2),
            "ratio": ratio(mean_on, mean_off)}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| scenario | # | prompt | cached | cold TTFT s | TTFT s | / cold "
            "| llama.cpp prompt / reused | llama.cpp TTFT s | / llama.cpp |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        def f(key: str, digits: int = 3, r: dict[str, Any] = r) -> str:
            value = r.get(key)
            return "" if value is None else f"{value:.{digits}f}"
        llama = (f"{r['llama_prompt_tokens']} / {r['llama_cached_tokens']}"
                 if "llama_prompt_tokens" in r else "")
        lines.append(f"| {r['scenario']} | {r['request']} | {r['prompt_tokens']} | "
                     f"{r.get('cached_tokens', '')} | {f('cold_ttft_s')} | {f('ttft_s')} | "
                     f"{f('vs_cold', 2) or f('vs_first', 2)} | {llama} | {f('llama_ttft_s')} | "
                     f"{f('vs_llama', 2)} |")
    return "\n".join(lines)


def main() -> int:
    global BUNDLE
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(sources.MODELS), default="qwen")
    parser.add_argument("--quant", default="int4")
    parser.add_argument("--bundle", type=Path, help="a bundle other than --model's --quant one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-mb", type=int, default=128)
    parser.add_argument("--pause", type=float, default=2.0, metavar="S",
                        help="seconds between an answer and the next turn (a person reading)")
    parser.add_argument("--no-daemon", action="store_true")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/prefix_cache.json")
    args = parser.parse_args()
    BUNDLE = args.bundle or sources.bundle_path(sources.MODELS[args.model], args.quant)
    prompts = Prompts.load(BUNDLE)
    workers = start_workers(args, BUNDLE)
    try:
        results = scenarios(workers, prompts, args.pause)
        memory = memory_at_bound(workers, prompts, args.cache_mb)
    finally:
        for worker in workers:
            worker.close()
    daemon = None
    if not args.no_daemon:
        with tempfile.TemporaryDirectory(prefix="prefix-cache-") as work:
            daemon = daemon_system(args, prompts, Path(work))
    rows = summarize(results, daemon)
    out = {
        "machine": machine_info(), "bundle": str(BUNDLE), "threads": args.threads,
        "cache_mb": args.cache_mb, "rows": rows, "targets": targets(rows),
        "decode": decode_check(rows), "memory": memory, "raw": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(table(rows))
    print()
    for t in out["targets"]:
        met = "met" if t["met"] else "NOT met"
        print(f"{t['target']}: {t['value']} (bound {t['bound']}, {met})")
    d = out["decode"]
    print(f"decode tok/s: {d['cache_on_tps']} with the cache, {d['cache_off_tps']} without "
          f"({d['ratio']}x)")
    print(f"peak RSS added by the cache at its {args.cache_mb} MB bound: "
          f"{memory['added_peak_mb']:.1f} MB (resident after: {memory['added_rss_mb']:.1f} MB)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
