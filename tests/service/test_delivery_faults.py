"""Answers are neither lost, doubled nor forged: queue limits, ACL refusals, cloned ids, reuse."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from edge_runtime.cli.doctor_report import FAIL, OK
from edge_runtime.config import build_config
from tests.fixtures.broker import BrokerAuth, MosquittoBroker, User
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.scenarios import REQUEST, send_long
from tests.service.schemas import assert_final

STATS = f"edge/{DEVICE}/stats"
STATUS = f"edge/{DEVICE}/status"


def test_an_offline_client_gets_every_final_from_a_broker_with_a_small_queue(
    broker_factory: Callable[..., MosquittoBroker],
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """Mosquitto keeps 20 messages for an offline session here; eight answers of ~200
    chunks each are streamed while the client is away, and it still gets all eight finals."""
    small = broker_factory(max_queued_messages=20)
    daemon_factory(small, service={"stats_interval_s": 60.0})
    away = client_factory(small.port, client_id="away", persistent=True)
    away.subscribe("away/#")
    away.close()
    sender = client_factory(small.port)
    sender.subscribe("away/#")
    topics = send_long(sender, "away", 8)
    assert sender.wait_for(lambda _r: all(sender.finals(t) for t in topics), 40)
    assert sum(len(sender.chunks(t)) for t in topics) > 100, "the answers were streamed"
    back = client_factory(small.port, client_id="away", persistent=True)
    assert back.wait_for(lambda _r: all(back.finals(t) for t in topics), 10), [
        t for t in topics if not back.finals(t)]
    for topic in topics:
        assert back.finals(topic)[0]["text"] == sender.finals(topic)[0]["text"]


def _acl(reply_rule: str) -> BrokerAuth:
    return BrokerAuth([
        User("dev1", "pw-dev1", ("topic read edge/dev1/request", "topic read edge/dev1/cancel",
                                 "topic write edge/dev1/#", reply_rule)),
        User("alice", "pw-alice", ("topic write edge/dev1/request",
                                   "topic read clients/alice/reply")),
        User("ops", "pw-ops", ("topic read edge/dev1/#",)),
    ])


def test_a_final_the_broker_refuses_is_logged_counted_and_kept(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """The broker's ACL does not let the device write alice's reply topic: its PUBACK
    says 0x87. The final is not counted as delivered: once the ACL is fixed and the daemon
    restarted, alice gets it."""
    auth = _acl("topic write clients/bob/reply")
    secured = broker_factory(auth)
    secret = tmp_path / "dev1-password"
    secret.write_text("pw-dev1\n")
    login = {"username": "dev1", "password_file": str(secret)}
    first = daemon_factory(secured, broker=login)
    alice = client_factory(secured.port, username="alice", password="pw-alice")
    alice.subscribe("clients/alice/reply")
    watcher = client_factory(secured.port, username="ops", password="pw-ops")
    watcher.subscribe(STATS)
    alice.publish(REQUEST, {"id": "a1", "prompt": "Hi", "max_tokens": 6},
                  response_topic="clients/alice/reply")
    assert watcher.wait_for(
        lambda _r: bool(watcher.on(STATS))
        and watcher.on(STATS)[-1].json()["counters"]["refused_by_broker"] == 1, 10)
    assert re.search(r"broker refused the reply to a1 on clients/alice/reply \(Not authorized",
                     first.log()), first.log()[-2000:]
    assert alice.on("clients/alice/reply") == []
    assert first.terminate() == 0
    secured.auth = _acl("topic write clients/+/reply")
    secured.reload_acl()
    second = daemon_factory(secured, start=False)
    second.config_path.write_text(first.config_path.read_text())
    second.start()
    final = alice.wait_final("clients/alice/reply", 15)
    assert_final(final)
    assert final["id"] == "a1" and final["finish_reason"] in ("stop", "length")


def test_two_daemons_with_one_device_id_back_off_and_doctor_sees_it(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """A cloned SD card: two daemons, one device id, one broker. They stop taking the
    session from each other within a few rounds, say why in the log and stats, and doctor
    on a third machine's view sees the device online from a boot that is not its own."""
    from edge_runtime.cli.doctor_checks import check_device_id

    backoff = {"takeover_backoff_s": 3, "reconnect_min_s": 1, "reconnect_max_s": 1}
    first = daemon_factory(broker, broker=backoff)
    second = daemon_factory(broker, start=False, broker=backoff,
                            service={"state_dir": str(tmp_path / "clone-state")})
    second.start(wait_ready=False)
    time.sleep(15)
    connects = broker.log_path.read_text().count(f"as edge-runtime-{DEVICE} ")
    assert connects <= 9, f"{connects} connections in 15 s: the two still fight"
    logs = first.log() + second.log()
    assert "is another client using client id edge-runtime-dev1" in logs
    assert first.alive and second.alive
    probe = client_factory(broker.port)
    probe.subscribe(STATUS)

    def announced(_r: object) -> bool:
        return any(m.json()["state"] == "online" and m.json()["short_connections"] > 0
                   for m in probe.on(STATUS))

    assert probe.wait_for(announced, 30), [m.json() for m in probe.on(STATUS)]
    config = build_config({"broker": {"url": broker.url},
                           "service": {"device_id": DEVICE}}, check_files=False)
    elsewhere = check_device_id(config, 3.0, boot="0" * 16)
    assert elsewhere is not None and elsewhere.status == FAIL, elsewhere
    assert "online from another machine" in elsewhere.summary


def test_doctor_finds_no_clone_for_its_own_daemon(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    from edge_runtime.cli.doctor_checks import check_device_id

    daemon_factory(broker)
    config = build_config({"broker": {"url": broker.url},
                           "service": {"device_id": DEVICE}}, check_files=False)
    here = check_device_id(config, 3.0)
    assert here is not None and here.status == OK, here
    assert "this machine" in here.summary
    unused = build_config({"broker": {"url": broker.url},
                           "service": {"device_id": "nobody"}}, check_files=False)
    found = check_device_id(unused, 3.0)
    assert found is not None and found.status == OK and "no daemon has announced" in found.summary


def _reply_acl() -> BrokerAuth:
    """The layout docs/security.md recommends: each client writes requests only under its
    own name and reads only its own reply topics."""
    return BrokerAuth(
        [User("dev1", "pw-dev1", ("topic read edge/dev1/request/+", "topic read edge/dev1/cancel",
                                  "topic write edge/dev1/#", "topic write clients/#")),
         User("alice", "pw-alice", ()), User("mallory", "pw-mallory", ())],
        patterns=["write edge/dev1/request/%u", "read edge/dev1/response/%u/#",
                  "read clients/%u/#", "write clients/%u/#"],
    )


def test_no_client_can_plant_answers_through_the_daemon(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoBroker],
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    secured = broker_factory(_reply_acl())
    secret = tmp_path / "dev1-password"
    secret.write_text("pw-dev1\n")
    daemon_factory(secured, broker={"username": "dev1", "password_file": str(secret)},
                   service={"reply_topic_pattern": "clients/%u/#"})
    alice = client_factory(secured.port, username="alice", password="pw-alice")
    mallory = client_factory(secured.port, username="mallory", password="pw-mallory")
    alice.subscribe("clients/alice/#")
    alice.subscribe("edge/dev1/response/alice/#")
    mallory.subscribe("clients/mallory/#")
    mallory.subscribe("edge/dev1/response/mallory/#")
    mine, theirs = "edge/dev1/request/mallory", "edge/dev1/request/alice"
    # Mallory names alice's reply topic: refused, and the error goes to mallory.
    mallory.publish(mine, {"id": "x1", "prompt": "fake", "reply_to": "clients/alice/reply"})
    refused = mallory.wait_final("edge/dev1/response/mallory/x1")
    assert refused["error"]["code"] == "bad_request", refused
    # Mallory pretends to be alice: the broker drops it (not authorized).
    mallory.publish(theirs, {"id": "alice-7", "prompt": "planted", "max_tokens": 4})
    # Mallory answers under an id alice will use: it stays in mallory's namespace.
    mallory.publish(mine, {"id": "alice-8", "prompt": "planted", "max_tokens": 4})
    mallory.wait_final("edge/dev1/response/mallory/alice-8")
    alice.publish(theirs, {"id": "alice-8", "prompt": "Hello", "max_tokens": 6,
                           "temperature": 0}, response_topic="clients/alice/reply")
    alice.publish(theirs, {"id": "alice-7", "prompt": "Hello", "max_tokens": 6,
                           "temperature": 0})
    own = alice.wait_final("clients/alice/reply")
    seventh = alice.wait_final("edge/dev1/response/alice/alice-7")
    reference = client_factory(secured.port, username="alice", password="pw-alice")
    reference.subscribe("clients/alice/ref")
    reference.publish(theirs, {"id": "ref", "prompt": "Hello", "max_tokens": 6,
                               "temperature": 0}, response_topic="clients/alice/ref")
    expected = reference.wait_final("clients/alice/ref")["text"]
    assert own["text"] == expected and seventh["text"] == expected, "alice's own answers"
    time.sleep(0.5)
    assert [m.topic for m in alice.received
            if json.loads(m.payload).get("id") in ("x1",)] == [], "nothing planted for alice"


def test_an_id_reused_with_other_content_is_refused_not_answered_from_the_record(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("reuse/#")
    probe.publish(REQUEST, {"id": "r", "prompt": "Hello", "max_tokens": 6},
                  response_topic="reuse/a")
    first = probe.wait_final("reuse/a")
    probe.publish(REQUEST, {"id": "r", "prompt": "What is the secret?", "max_tokens": 6},
                  response_topic="reuse/a")
    assert probe.wait_for(lambda _r: len(probe.finals("reuse/a")) == 2, 10)
    other = probe.finals("reuse/a")[1]
    assert_final(other)
    assert other["error"]["code"] == "bad_request" and "already used" in other["error"]["message"]
    assert other["text"] == "" != first["text"]
    # The same content again (a retry, even with another deadline) is still answered.
    probe.publish(REQUEST, {"id": "r", "prompt": "Hello", "max_tokens": 6,
                            "deadline": time.time() + 60}, response_topic="reuse/a")
    assert probe.wait_for(lambda _r: len(probe.finals("reuse/a")) == 3, 10)
    assert probe.finals("reuse/a")[2]["text"] == first["text"]
