"""A generation server on stdin/stdout, one JSON object a line, for the prefix-cache benchmark.

The driver (benchmarks/prefix_cache.py) builds every prompt and sends token ids; a worker
answers with the time to its first token and the answer. Standard library only: the
llama.cpp worker runs in the anchor venv.

Requests: ``{"op": "generate", "ids": [...], "max_new": n}``, ``{"op": "clear"}`` (forget
every cached prefix), ``{"op": "memory"}``, ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


def worker_args(doc: str | None) -> argparse.Namespace:
    """The arguments every worker takes: its model file, threads and cache bound."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-mb", type=int, default=128)
    return parser.parse_args()


@dataclass
class Answer:
    """One generation: seconds from the call to the first token and to the last, the text."""

    ttft_s: float
    total_s: float
    text: str
    new_tokens: int
    cached_tokens: int | None = None  # what the stack says it reused, when it says

    @property
    def decode_tps(self) -> float:
        steps, span = self.new_tokens - 1, self.total_s - self.ttft_s
        return steps / span if steps > 0 and span > 0 else 0.0


def memory_mb() -> dict[str, float]:
    """This process's peak and current resident set (VmHWM, VmRSS) in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        for key, name in (("VmHWM:", "peak_rss_mb"), ("VmRSS:", "rss_mb")):
            if line.startswith(key):
                out[name] = int(line.split()[1]) / 1024.0
    return out


def serve(generate: Callable[[list[int], int], Answer], clear: Callable[[], None]) -> int:
    """Answer the driver's requests until it says quit; print READY first."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            return 0
        if op == "generate":
            answer = generate([int(i) for i in request["ids"]], int(request["max_new"]))
            reply = {**asdict(answer), "decode_tps": answer.decode_tps}
        elif op == "clear":
            clear()
            reply = {}
        elif op == "memory":
            reply = dict(memory_mb())
        else:
            reply = {"error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)
    return 0
