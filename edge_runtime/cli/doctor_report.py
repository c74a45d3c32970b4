"""The doctor's findings: one line per check, OK / WARN / FAIL, with what to fix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One check's result; FAIL means the daemon cannot serve until it is fixed."""

    check: str
    status: str
    summary: str
    fix: str = ""


def blocking(findings: Sequence[Finding]) -> bool:
    """Return whether any finding stops the daemon from serving."""
    return any(f.status == FAIL for f in findings)


def render_text(findings: Sequence[Finding], header: str) -> str:
    """Render the findings as one screen of aligned text."""
    lines = [header]
    width = max((len(f.check) for f in findings), default=8)
    for f in findings:
        lines.append(f"  {f.status:<4}  {f.check:<{width}}  {f.summary}")
        if f.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {f.fix}")
    fails = sum(f.status == FAIL for f in findings)
    warns = sum(f.status == WARN for f in findings)
    verdict = "serving is blocked" if fails else "ready to serve"
    lines.append(f"{fails} FAIL, {warns} WARN: {verdict}")
    return "\n".join(lines)


def render_json(findings: Sequence[Finding], extra: dict[str, object]) -> str:
    """Render the findings as a JSON document for scripts."""
    doc = dict(extra)
    doc["checks"] = [asdict(f) for f in findings]
    doc["blocking"] = blocking(findings)
    return json.dumps(doc, indent=2)
