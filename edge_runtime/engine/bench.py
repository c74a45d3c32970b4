"""Measure a bundle: load time, prefill and decode speed, time to first token, peak memory.

Importable so benchmark scripts reuse exactly what ``edge-runtime bench`` measures. Runs are
greedy and ignore end-of-sequence tokens, so every run generates exactly ``new_tokens``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.loader import load_engine
from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.request import Sampling
from edge_runtime.engine.types import GenerationResult
from edge_runtime.errors import BadRequest

_FILLER = (
    "Field devices in remote clinics, farms and weather stations often work without any "
    "connection to the internet. A small language model running on the device can still "
    "summarize sensor readings, answer questions from the staff and draft short reports. "
    "Each gateway collects temperature, humidity, pressure and battery levels every minute, "
    "keeps a day of history on its flash storage, and sends a digest when a link appears. "
)


@dataclass(frozen=True)
class RunFigures:
    """One timed generation."""

    prefill_s: float
    decode_s: float
    first_token_s: float
    prefill_tok_s: float
    decode_tok_s: float


@dataclass(frozen=True)
class BenchReport:
    """Medians over the runs, plus the load and memory figures."""

    bundle: str
    model: str
    quantization: str
    bits: int
    graph: str
    provider: str
    threads: int
    load_s: float
    prompt_tokens: int
    new_tokens: int
    runs: int
    prefill_tok_s: float
    decode_tok_s: float
    first_token_s: float
    peak_rss_mb: float
    per_run: list[RunFigures] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def peak_rss_mb() -> float:
    """Return this process's peak resident memory (VmHWM) in MiB, 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def prompt_ids(engine: OnnxEngine, count: int) -> list[int]:
    """Return exactly ``count`` token ids of plain English for a prompt."""
    text = _FILLER
    ids = engine.tokenizer.encode(text, add_bos=False)
    while len(ids) < count:
        text += _FILLER
        ids = engine.tokenizer.encode(text, add_bos=False)
    if engine.tokenizer.add_bos and engine.tokenizer.bos_id is not None:
        return [engine.tokenizer.bos_id, *ids[: count - 1]]
    return ids[:count]


def _figures(result: GenerationResult) -> RunFigures:
    t, u = result.timings, result.usage
    return RunFigures(
        prefill_s=t.prefill_s,
        decode_s=t.decode_s,
        first_token_s=t.first_token_s,
        prefill_tok_s=u.prompt_tokens / t.prefill_s if t.prefill_s > 0 else 0.0,
        decode_tok_s=(u.completion_tokens - 1) / t.decode_s if t.decode_s > 0 else 0.0,
    )


def run_once(engine: OnnxEngine, ids: list[int], new_tokens: int) -> RunFigures:
    """Generate ``new_tokens`` greedily after ``ids`` and return the figures."""
    params = Sampling(max_tokens=new_tokens, temperature=0.0)
    return _figures(engine.generate_ids(ids, params, ignore_eos=True))


def measure(
    bundle_dir: Path | str,
    *,
    prompt_tokens: int = 139,
    new_tokens: int = 128,
    runs: int = 3,
    options: EngineOptions | None = None,
    warmup: bool = True,
) -> BenchReport:
    """Load ``bundle_dir`` and time ``runs`` generations; return medians."""
    if prompt_tokens < 1 or new_tokens < 2 or runs < 1:
        raise BadRequest("need prompt_tokens >= 1, new_tokens >= 2 and runs >= 1")
    started = time.perf_counter()
    engine = load_engine(bundle_dir, options)
    load_s = time.perf_counter() - started
    if prompt_tokens + new_tokens > engine.context_length:
        raise BadRequest(
            f"{prompt_tokens} + {new_tokens} tokens exceed the context ({engine.context_length})"
        )
    ids = prompt_ids(engine, prompt_tokens)
    if warmup:
        run_once(engine, ids[:16], 4)
    figures = [run_once(engine, ids, new_tokens) for _ in range(runs)]
    return _report(engine, load_s, prompt_tokens, new_tokens, figures)


def _report(
    engine: OnnxEngine, load_s: float, prompt: int, new: int, figures: list[RunFigures]
) -> BenchReport:
    info, m = engine.info, engine.manifest
    return BenchReport(
        bundle=str(engine.bundle_dir),
        model=m.name,
        quantization=m.quantization.method,
        bits=m.quantization.bits,
        graph=m.graph.kind,
        provider=str(info["provider"]),
        threads=engine.report.threads,
        load_s=load_s,
        prompt_tokens=prompt,
        new_tokens=new,
        runs=len(figures),
        prefill_tok_s=statistics.median(f.prefill_tok_s for f in figures),
        decode_tok_s=statistics.median(f.decode_tok_s for f in figures),
        first_token_s=statistics.median(f.first_token_s for f in figures),
        peak_rss_mb=peak_rss_mb(),
        per_run=figures,
    )


def format_table(report: BenchReport) -> str:
    """Return the report as a small aligned table."""
    rows = [
        ("model", f"{report.model} ({report.quantization}, {report.graph} graph)"),
        ("provider", f"{report.provider}, {report.threads} threads"),
        ("load", f"{report.load_s:.2f} s"),
        ("prompt / new tokens", f"{report.prompt_tokens} / {report.new_tokens}"),
        ("prefill", f"{report.prefill_tok_s:.1f} tok/s"),
        ("decode", f"{report.decode_tok_s:.1f} tok/s"),
        ("time to first token", f"{report.first_token_s * 1000:.0f} ms"),
        ("peak RSS", f"{report.peak_rss_mb:.0f} MiB"),
        ("runs (median of)", str(report.runs)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
