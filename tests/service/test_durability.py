"""Nothing is lost: broker outages, daemon crashes, duplicates, expiry, cancel, shutdown."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.polling import wait_until
from tests.service.scenarios import LONG, REQUEST, exactly_one_final_each, send_long, unanswered
from tests.service.schemas import assert_final

CANCEL = f"edge/{DEVICE}/cancel"


def test_broker_restart_mid_generation_delivers_each_answer_once_and_whole(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker, service={"stats_interval_s": 60.0})
    probe = client_factory(broker.port, client_id="outage-probe", persistent=True)
    probe.subscribe(f"edge/{DEVICE}/status")
    probe.subscribe("outage/#")
    topics = send_long(probe, "outage", 16, id_prefix="o")
    assert probe.wait_for(lambda _r: bool(probe.chunks(topics[0])), 20)
    broker.stop()
    before_outage = sum(1 for t in topics if probe.finals(t))
    time.sleep(2.5)  # the daemon keeps generating with no broker
    broker.start()
    assert before_outage < len(topics), "some answers were generated during the outage"
    exactly_one_final_each(probe, topics)
    states = [m.json()["state"] for m in probe.on(f"edge/{DEVICE}/status")]
    assert states[-1] == "online", states
    probe.publish(REQUEST, {"id": "reference", **LONG}, response_topic="outage/ref")
    reference = probe.wait_final("outage/ref")
    for topic in topics:
        final = probe.finals(topic)[0]
        assert_final(final)
        assert final["text"] == reference["text"], "the answer arrived whole"


def test_sigkill_mid_generation_answers_every_accepted_request_once(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    first = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe(f"edge/{DEVICE}/status")
    probe.subscribe("crash/#")
    topics = [*send_long(probe, "crash", 6, id_prefix="c"), "crash/6"]
    assert probe.wait_for(lambda _r: bool(probe.chunks(topics[0])), 20)
    first.kill()
    status = f"edge/{DEVICE}/status"
    assert probe.wait_for(lambda _r: probe.on(status)[-1].json()["state"] == "offline", 10), (
        "the broker published the Last Will"
    )
    # Sent while the daemon is dead: the broker keeps it for the daemon's session.
    probe.publish(REQUEST, {"id": "c6", **LONG}, response_topic=topics[6])
    second = daemon_factory(broker, like=first)
    exactly_one_final_each(probe, topics)
    assert "resuming" in second.log()
    assert probe.on(status)[-1].json()["state"] == "online"


def test_restart_while_the_broker_is_down_answers_each_resumed_request_once(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """A device that reboots with the broker out of reach finishes its accepted requests
    offline; when the broker is back, each answer goes out once (not also from the outbox)."""
    first = daemon_factory(broker)
    probe = client_factory(broker.port, client_id="reboot-probe", persistent=True)
    probe.subscribe(f"edge/{DEVICE}/status")
    probe.subscribe("reboot/#")
    topics = send_long(probe, "reboot", 4, id_prefix="r")
    assert probe.wait_for(lambda _r: bool(probe.chunks(topics[0])), 20)
    first.kill()
    status = f"edge/{DEVICE}/status"
    assert probe.wait_for(lambda _r: probe.on(status)[-1].json()["state"] == "offline", 10)
    broker.stop()
    second = daemon_factory(broker, start=False, like=first)
    second.start(wait_ready=False)
    resumed_done = wait_until(lambda: unanswered(tmp_path / "state") == 0, 30, interval=0.1)
    assert resumed_done, "the resumed requests were answered while the broker was down"
    assert "resuming" in second.log()
    broker.start()
    second.wait_ready()
    exactly_one_final_each(probe, topics)


def test_repeated_id_is_answered_from_the_record(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("dup/#")
    probe.subscribe(f"edge/{DEVICE}/stats")
    body = {"id": "same", "prompt": "Hi", "max_tokens": 30}
    probe.publish(REQUEST, body, response_topic="dup/a")
    probe.publish(REQUEST, body, response_topic="dup/a")  # duplicate delivery while pending
    first = probe.wait_final("dup/a")
    time.sleep(1.0)
    assert len(probe.finals("dup/a")) == 1
    probe.publish(REQUEST, body, response_topic="dup/a")  # a retry after the answer
    assert probe.wait_for(lambda _r: len(probe.finals("dup/a")) == 2, 10)
    assert probe.finals("dup/a")[1]["text"] == first["text"]
    stats = f"edge/{DEVICE}/stats"
    seen = len(probe.on(stats))
    assert probe.wait_for(lambda _r: len(probe.on(stats)) > seen, 5)
    counters = probe.on(stats)[-1].json()["counters"]
    assert counters["accepted"] == 1 and counters["replayed"] == 1


def test_expired_requests_are_never_generated(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    first = daemon_factory(broker)
    first.kill()  # the broker now holds requests for the daemon's session
    probe = client_factory(broker.port)
    probe.subscribe("exp/#")
    probe.subscribe(f"edge/{DEVICE}/stats")
    probe.publish(REQUEST, {"id": "by-deadline", "prompt": "x", "deadline": time.time() + 0.5},
                  response_topic="exp/deadline")
    probe.publish(REQUEST, {"id": "by-expiry", "prompt": "x"}, response_topic="exp/expiry",
                  expiry=1)
    time.sleep(2.0)
    daemon_factory(broker, like=first)
    final = probe.wait_final("exp/deadline")
    assert_final(final)
    assert final["error"]["code"] == "expired"
    assert final["usage"]["completion_tokens"] == 0
    assert probe.chunks("exp/deadline") == [], "an expired request is never generated"
    # The broker drops a message whose v5 expiry passed: it never reaches the daemon.
    stats = f"edge/{DEVICE}/stats"
    seen = len(probe.on(stats))
    assert probe.wait_for(lambda _r: len(probe.on(stats)) > seen, 5)
    counters = probe.on(stats)[-1].json()["counters"]
    assert counters["received"] == 1 and counters["accepted"] == 0
    assert probe.on("exp/expiry") == []


def test_cancel_stops_requests_before_they_complete(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("cancel/#")
    topics = [f"cancel/{i}" for i in range(4)]
    # The first is cancelled right behind its request (running by then, or about to run),
    # the last while it waits behind the others.
    probe.publish(REQUEST, {"id": "k0", **LONG}, response_topic=topics[0])
    probe.publish(CANCEL, {"id": "k0"})
    for i in (1, 2, 3):
        probe.publish(REQUEST, {"id": f"k{i}", **LONG}, response_topic=topics[i])
    probe.publish(CANCEL, {"id": "k3"})
    exactly_one_final_each(probe, topics)
    first, last = probe.finals(topics[0])[0], probe.finals(topics[-1])[0]
    assert first["finish_reason"] == "cancelled"
    assert first["usage"]["completion_tokens"] < 220
    assert last["finish_reason"] == "cancelled" and last["text"] == ""
    assert probe.chunks(topics[-1]) == []
    assert probe.finals(topics[1])[0]["finish_reason"] == "length", "others are unaffected"


def test_sigterm_finishes_in_flight_refuses_queue_and_says_stopped(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon = daemon_factory(broker, start=False)
    daemon.env_extra["WATCHDOG_USEC"] = "500000"
    daemon.start()
    probe = client_factory(broker.port)
    probe.subscribe(f"edge/{DEVICE}/status")
    probe.subscribe("term/#")
    topics = send_long(probe, "term", 6, id_prefix="t")
    assert probe.wait_for(lambda _r: bool(probe.chunks("term/0")), 20)
    assert daemon.terminate() == 0
    assert any("STOPPING=1" in n for n in daemon.notifications)
    assert any(n == "WATCHDOG=1" for n in daemon.notifications), "the main loop fed the watchdog"
    exactly_one_final_each(probe, topics, timeout=10)
    finals = [probe.finals(t)[0] for t in topics]
    assert finals[0]["finish_reason"] == "length", "the request in flight was finished"
    assert finals[-1]["error"]["code"] == "shutting_down", "queued requests are refused"
    for final in finals:
        assert final["finish_reason"] == "length" or final["error"]["code"] == "shutting_down"
    status = f"edge/{DEVICE}/status"
    assert probe.wait_for(lambda _r: probe.on(status)[-1].json()["state"] == "stopped", 5)
