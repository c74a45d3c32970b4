"""Requests sent and answers counted the same way by every fault test."""

from __future__ import annotations

import json
import time

from tests.service.conftest import DEVICE
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"
# The tiny model writes ~1000 tokens/s, so one LONG request takes about 0.2 s: tests that
# need the daemon busy for a while queue several.
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
