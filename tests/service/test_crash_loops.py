"""One request never takes the device down: restart loops are broken, deadlines hold in batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.broker import MosquittoBroker
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.polling import wait_until
from tests.service.scenarios import REQUEST, reruns, send_long
from tests.service.schemas import assert_final


def _runs(probe: Probe, topic: str) -> int:
    """Count how many times a request streamed from the start (chunk seq 0)."""
    return sum(1 for c in probe.chunks(topic) if c["seq"] == 0)


def test_a_request_in_flight_at_two_crashes_is_answered_and_not_run_again(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """SIGKILL twice while the same request generates: the third start answers it
    ``internal`` instead of running it (a poison request would otherwise crash the daemon at
    every start); the requests that only waited behind it are run and answered once."""
    first = daemon_factory(broker)
    state = tmp_path / "state"
    probe = client_factory(broker.port)
    probe.subscribe("loop/#")
    topics = send_long(probe, "loop", 4)
    assert probe.wait_for(lambda _r: _runs(probe, topics[0]) == 1, 20)
    first.kill()
    assert not probe.finals(topics[0]), "killed while the first request ran"
    second = daemon_factory(broker, like=first)
    assert wait_until(lambda: reruns(state, "loop0") == 1, 20), "resumed once"
    second.kill()
    assert not probe.finals(topics[0]), "killed while it ran again"
    third = daemon_factory(broker, like=first)
    assert probe.wait_for(lambda _r: all(probe.finals(t) for t in topics), 30)
    time.sleep(1.0)
    poison = probe.finals(topics[0])
    assert len(poison) == 1, poison
    assert_final(poison[0])
    assert poison[0]["error"]["code"] == "internal", poison[0]
    assert "not run again" in poison[0]["error"]["message"]
    assert _runs(probe, topics[0]) <= 2, "not generated a third time"
    for topic in topics[1:]:
        finals = probe.finals(topic)
        assert len(finals) == 1 and finals[0]["finish_reason"] == "length", (topic, finals)
    assert "in flight at two restarts" in third.log()
    assert third.alive


def test_deadlines_stop_every_request_of_a_batch(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """With four requests decoded together, each is stopped at the generation deadline
    with its partial text and one final; the daemon then serves as before."""
    probe = client_factory(broker.port)
    probe.subscribe("late/#")
    daemon = daemon_factory(broker, engine={"max_batch": 4},
                            service={"generation_deadline_s": 0.05})
    topics = send_long(probe, "late", 6)
    assert probe.wait_for(lambda _r: all(probe.finals(t) for t in topics), 30)
    time.sleep(0.5)
    for topic in topics:
        finals = probe.finals(topic)
        assert len(finals) == 1, (topic, finals)
        final = finals[0]
        assert_final(final)
        assert final["error"]["code"] == "expired", final
        assert len(probe.chunks(topic)) < 220, "stopped before max_tokens"
    probe.publish(REQUEST, {"id": "after", "prompt": "Hi", "max_tokens": 4},
                  response_topic="late/after")
    after = probe.wait_final("late/after")
    assert after["finish_reason"] in ("stop", "length"), after
    assert daemon.alive
