"""Counters and the status, info and stats payloads the daemon publishes."""

from __future__ import annotations

import collections
import hashlib
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import __version__

if TYPE_CHECKING:  # the doctor reads boot_digest without loading the engine
    from edge_runtime.engine.prefix_cache import CacheStats
    from edge_runtime.engine.scheduler import SchedulerCounters

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass
class Counters:
    received: int = 0
    accepted: int = 0
    answered: int = 0
    replayed: int = 0
    unanswerable: int = 0
    store_errors: int = 0
    refused_by_broker: int = 0
    """Finals a v5 broker answered with a failure reason code (an ACL denial, 0x87)."""
    session_takeovers: int = 0
    short_connections: int = 0
    """Connections the broker closed soon after accepting them (a duplicated client id?)."""
    quarantined: int = 0
    given_up: int = 0
    """Requests in flight at two restarts in a row, answered ``internal`` instead of run."""
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: int = 0
    decode_s: float = 0.0
    last_tokens_per_s: float | None = None

    def generation(self, tokens: int, decode_s: float) -> None:
        """Account one finished generation."""
        self.tokens += tokens
        self.decode_s += decode_s
        if tokens > 1 and decode_s > 0:
            self.last_tokens_per_s = round((tokens - 1) / decode_s, 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "accepted": self.accepted, "answered": self.answered,
            "replayed": self.replayed, "unanswerable": self.unanswerable,
            "store_errors": self.store_errors, "refused_by_broker": self.refused_by_broker,
            "session_takeovers": self.session_takeovers,
            "short_connections": self.short_connections, "quarantined": self.quarantined,
            "given_up": self.given_up, "errors": dict(self.errors),
            "tokens_generated": self.tokens,
        }


@dataclass(frozen=True)
class Identity:
    """Tell this daemon apart from another one that uses the same device id.

    ``instance`` is new at every start; ``boot`` is a digest of the kernel's boot id, the
    same for every process of one boot of one machine and different on any other, so
    ``edge-runtime doctor`` on a board can tell its own daemon from a clone elsewhere.
    """

    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    boot: str = field(default_factory=lambda: boot_digest())
    host: str = field(default_factory=socket.gethostname)

    def as_dict(self) -> dict[str, str]:
        return {"instance": self.instance, "boot": self.boot, "host": self.host}


def boot_digest(path: Path = BOOT_ID) -> str:
    """Return a short digest of this machine's boot id ("" where there is none)."""
    try:
        raw = path.read_text(encoding="ascii").strip()
    except OSError:
        return ""
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def rss_mb() -> float | None:
    """Return this process's resident memory in MB (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=str).encode()


def status_payload(
    state: str, device: str, model: str | None, queue_depth: int,
    identity: Identity | None = None, store: dict[str, Any] | None = None,
    counters: Counters | None = None,
) -> bytes:
    data: dict[str, Any] = {
        "state": state, "device": device, "model": model, "queue_depth": queue_depth,
        "ts": round(time.time(), 3),
    }
    if identity is not None:
        data.update(identity.as_dict())
    if store is not None:
        data["store"] = store
    if counters is not None:
        data["session_takeovers"] = counters.session_takeovers
        data["short_connections"] = counters.short_connections
    return _dump(data)


def info_payload(device: str, engine_info: dict[str, object], limits: dict[str, Any]) -> bytes:
    return _dump({
        "device": device, "version": __version__, "model": engine_info, "limits": limits,
        "protocols": ["5", "3.1.1"],
    })


def scheduler_stats(counters: SchedulerCounters) -> dict[str, Any]:
    """Return what the engine's scheduler has done so far."""
    stats: dict[str, Any] = {
        "peak_batch": counters.peak_batch,
        "decode_steps": counters.decode_steps,
        "decode_tokens": counters.decode_tokens,
        "decode_tokens_per_s": round(counters.decode_tok_s, 2),
        "failed_sequences": counters.failed,
    }
    if counters.prefix_cache is not None:
        stats["prefix_cache"] = prefix_cache_stats(counters.prefix_cache)
    return stats


def prefix_cache_stats(c: CacheStats) -> dict[str, Any]:
    """The prefix cache's size and use: hit rate over prompt tokens, and over prompts."""
    return {
        "mb": round(c.bytes / 2**20, 2), "budget_mb": round(c.budget / 2**20, 2),
        "blocks": c.blocks, "tokens": c.tokens,
        "hit_rate": round(c.hit_rate, 4),
        "prompts": c.lookups, "prompts_hit": c.hits,
        "prompt_tokens": c.prompt_tokens, "cached_tokens": c.cached_tokens,
        "evicted_blocks": c.evicted_blocks, "read_again_tokens": c.read_again,
        "whole_blocks": c.whole_blocks,
    }


def stats_payload(
    device: str, counters: Counters, queue_depth: int, queue_size: int, outbox: int,
    started: float, scheduler: dict[str, Any], store: dict[str, Any] | None = None,
) -> bytes:
    avg = (
        round(counters.tokens / counters.decode_s, 2) if counters.decode_s > 0 else None
    )
    data = {
        "device": device, "ts": round(time.time(), 3),
        "uptime_s": round(time.monotonic() - started, 1),
        "queue_depth": queue_depth, "queue_size": queue_size, "outbox": outbox,
        "tokens_per_s": counters.last_tokens_per_s, "tokens_per_s_avg": avg,
        "rss_mb": rss_mb(), "counters": counters.as_dict(), "scheduler": scheduler,
        "store": store,
    }
    return _dump(data)
