"""Turn per-run stack results into medians, ratios, targets and a printed table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

EDGE = "edge-runtime"
GENAI = "onnxruntime-genai"
LLAMA = "llama.cpp"

METRICS = ("load_s", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_mb", "new_tokens",
           "prompt_tokens")


@dataclass
class StackSummary:
    """Medians over the runs of one stack on one model file."""

    label: str
    stack: str
    model_path: str
    file_mb: float
    quant: str
    runs: list[dict[str, object]] = field(default_factory=list)

    def median(self, metric: str) -> float:
        values = [float(r[metric]) for r in self.runs if metric in r]  # type: ignore[arg-type]
        return statistics.median(values) if values else 0.0

    def to_dict(self) -> dict[str, object]:
        medians = {m: self.median(m) for m in METRICS}
        return {"label": self.label, "stack": self.stack, "model_path": self.model_path,
                "file_mb": self.file_mb, "quant": self.quant, "median": medians,
                "runs": self.runs}


@dataclass(frozen=True)
class Target:
    """One goal from the issue: edge-runtime's figure against an anchor's."""

    name: str
    metric: str
    anchor: str
    ratio: float
    higher_is_better: bool = True


TARGETS = (
    Target("decode >= 1.0x genai", "decode_tps", GENAI, 1.0),
    Target("decode >= 1.4x llama.cpp", "decode_tps", LLAMA, 1.4),
    Target("prefill >= 1.0x genai", "prefill_tps", GENAI, 1.0),
    Target("peak RSS <= 1.1x llama.cpp", "peak_rss_mb", LLAMA, 1.1, higher_is_better=False),
    Target("bundle < GGUF", "file_mb", LLAMA, 1.0, higher_is_better=False),
)


def _value(summary: StackSummary, metric: str) -> float:
    return summary.file_mb if metric == "file_mb" else summary.median(metric)


def evaluate(edge: StackSummary, anchors: dict[str, StackSummary],
             gguf_mb: float) -> list[dict[str, object]]:
    """Return each target with edge-runtime's ratio and whether it was met.

    The size target compares with the GGUF itself, so it holds even when llama.cpp did not run.
    """
    rows: list[dict[str, object]] = []
    for target in TARGETS:
        anchor = anchors.get(target.anchor)
        if target.metric == "file_mb":
            ratio = edge.file_mb / gguf_mb
            rows.append({"target": target.name, "edge": edge.label, "ratio": ratio,
                         "met": ratio < target.ratio})
            continue
        if anchor is None or _value(anchor, target.metric) <= 0:
            rows.append({"target": target.name, "edge": edge.label, "ratio": None,
                         "met": None})
            continue
        ratio = _value(edge, target.metric) / _value(anchor, target.metric)
        met = ratio >= target.ratio if target.higher_is_better else ratio <= target.ratio
        rows.append({"target": target.name, "edge": edge.label, "ratio": ratio, "met": met})
    return rows


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Return an aligned Markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [_fmt_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_fmt_row(r, widths) for r in rows]
    return "\n".join(lines)


def stacks_table(summaries: list[StackSummary]) -> str:
    """Return the per-stack medians as a Markdown table."""
    header = ["stack", "quant", "file MB", "load s", "TTFT ms", "prefill tok/s",
              "decode tok/s", "peak RSS MB", "prompt/new", "runs"]
    rows = [[
        s.label, s.quant, f"{s.file_mb:.0f}", f"{s.median('load_s'):.2f}",
        f"{s.median('ttft_s') * 1000:.0f}", f"{s.median('prefill_tps'):.1f}",
        f"{s.median('decode_tps'):.1f}", f"{s.median('peak_rss_mb'):.0f}",
        f"{s.median('prompt_tokens'):.0f}/{s.median('new_tokens'):.0f}", str(len(s.runs)),
    ] for s in summaries]
    return markdown_table(header, rows)


def ratios_table(edges: list[StackSummary], anchors: dict[str, StackSummary]) -> str:
    """Return edge-runtime's ratio to each anchor for every headline figure."""
    header = ["edge-runtime", "vs", "prefill", "decode", "TTFT", "load", "peak RSS", "file"]
    rows = []
    for edge in edges:
        for name, anchor in anchors.items():
            rows.append([edge.label, name, *(_ratio(edge, anchor, m) for m in (
                "prefill_tps", "decode_tps", "ttft_s", "load_s", "peak_rss_mb", "file_mb"))])
    return markdown_table(header, rows)


def _ratio(edge: StackSummary, anchor: StackSummary, metric: str) -> str:
    base = _value(anchor, metric)
    return f"{_value(edge, metric) / base:.2f}x" if base > 0 else "-"


def targets_table(rows: list[dict[str, object]]) -> str:
    """Return the targets with met/MISSED marks."""
    header = ["target", "edge-runtime", "ratio", "result"]
    body = []
    for row in rows:
        ratio = row["ratio"]
        mark = "n/a" if row["met"] is None else ("met" if row["met"] else "MISSED")
        body.append([str(row["target"]), str(row["edge"]),
                     "-" if ratio is None else f"{float(ratio):.2f}x", mark])  # type: ignore[arg-type]
    return markdown_table(header, body)


def streams_table(figures: dict[str, object]) -> str:
    """Return the concurrent-streams figures and the 2.5x target.

    The target is judged on the batched decode rate (decode forwards only), the analogue of
    the single-stream decode rate, which also leaves the prefill out. The rate over the whole
    decode window, where the other streams' prefills stall decoding, and the end-to-end rate
    are shown next to it.
    """
    phase = figures.get("batched_decode_speedup")
    speedup = float(phase if phase is not None else figures["decode_speedup"])  # type: ignore[arg-type]
    header = ["streams", "batching", "single decode tok/s", "batched decode tok/s", "speedup",
              "incl. prefill stalls", "end-to-end", "target >= 2.5x"]
    batched = figures.get("batched_decode_tps", figures["total_decode_tps"])
    row = [
        str(figures["streams"]), str(figures.get("batching")),
        f"{float(figures['single_decode_tps']):.1f}",  # type: ignore[arg-type]
        f"{float(batched):.1f}",  # type: ignore[arg-type]
        f"{speedup:.2f}x",
        f"{float(figures['decode_speedup']):.2f}x",  # type: ignore[arg-type]
        f"{float(figures['end_to_end_speedup']):.2f}x",  # type: ignore[arg-type]
        "met" if speedup >= 2.5 else "MISSED",
    ]
    return markdown_table(header, [row])


def agreement(a: list[int], b: list[int]) -> int:
    """Return how many leading generated tokens two stacks share."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count
