"""Requests sent and answers counted the same way by every fault test."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from tests.service.conftest import DEVICE
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"
# The service model (tiny_models.PACED) takes about a millisecond a token, so one LONG
# request runs for a few tenths of a second: tests that need the daemon busy for a while
# queue several.
LONG = {"prompt": "Tell me a long story", "max_tokens": 220, "temperature": 0.0}
DUPLICATE_WINDOW_S = 1.5  # a second final would come within this


def send_long(probe: Probe, prefix: str, count: int, *, id_prefix: str | None = None,
              **fields: object) -> list[str]:
    """Send ``count`` LONG requests (``fields`` override), one per reply topic ``prefix/i``;
    ids are ``{id_prefix or prefix}{i}``. Return the reply topics."""
    topics = [f"{prefix}/{i}" for i in range(count)]
    for i, topic in enumerate(topics):
        body = {"id": f"{id_prefix or prefix}{i}", **LONG, **fields}
        probe.publish(REQUEST, body, response_topic=topic)
    return topics


def exactly_one_final_each(probe: Probe, topics: list[str], timeout: float = 40) -> None:
    """Wait for a final on every topic, then check that none gets a second one, and that
    each final is valid."""
    assert probe.wait_for(lambda _r: all(probe.finals(t) for t in topics), timeout), [
        t for t in topics if not probe.finals(t)
    ]
    time.sleep(DUPLICATE_WINDOW_S)
    # Every topic spelled out: pytest shortens a dict given as the message to its first items.
    wrong = {t: probe.finals(t) for t in topics if len(probe.finals(t)) != 1}
    assert not wrong, "final messages per topic, want 1 each: " + ", ".join(
        f"{t}: {len(finals)}" + (" (identical)" if len({json.dumps(f) for f in finals}) == 1
                                 else " (differ)")
        for t, finals in wrong.items()
    )
    for topic in topics:
        assert_final(probe.finals(topic)[0])


def _query(state: Path, sql: str, *args: object) -> int:
    with contextlib.closing(sqlite3.connect(state / "state.sqlite3", timeout=5)) as db:
        row = db.execute(sql, args).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def unanswered(state: Path) -> int:
    """How many accepted requests a daemon's state folder holds unanswered."""
    return _query(state, "SELECT COUNT(*) FROM requests WHERE state = 'pending'")


def reruns(state: Path, request_id: str) -> int:
    """How many times a restart has started ``request_id`` again (the store marks each one
    just before it runs; its chunks may go out before the daemon is connected, and be lost)."""
    return _query(state, "SELECT MAX(attempts) FROM requests WHERE key LIKE ?", f"{request_id}\n%")
