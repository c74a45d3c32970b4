"""What every stack adapter shares: arguments, peak memory, and the result line.

Standard library only: adapters run in the main interpreter and in the anchor venv.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class RunResult:
    """One generation by one stack, in seconds and tokens."""

    stack: str
    model_path: str
    threads: int
    load_s: float
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    prefill_s: float
    decode_s: float
    peak_rss_mb: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, over the time after the first."""
        steps = self.new_tokens - 1
        return steps / self.decode_s if self.decode_s > 0 and steps > 0 else 0.0


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse the arguments every adapter takes, and those ``extra`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--prompt-file", required=True, type=Path,
                        help="JSON with 'text' and 'ids' (ids from the bundle's tokenizer)")
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=1)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def load_prompt(path: Path) -> tuple[str, list[int]]:
    """Return the prompt text and its token ids."""
    data = json.loads(path.read_text())
    return str(data["text"]), [int(i) for i in data["ids"]]


def peak_rss_mb() -> float:
    """Return this process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def emit(result: RunResult) -> None:
    """Print the result as one prefixed JSON line for the driver to pick up."""
    payload = asdict(result)
    payload["prefill_tps"] = result.prefill_tps
    payload["decode_tps"] = result.decode_tps
    sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()
