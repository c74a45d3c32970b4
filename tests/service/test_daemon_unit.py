"""The daemon's main loop with a fake transport and a fake engine: ordering and recovery."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import build_config
from edge_runtime.service.daemon import Daemon
from edge_runtime.service.notify import Notifier
from edge_runtime.service.store import Store, StoreError
from edge_runtime.service.transport import Published
from tests.service.fakes import FakeEngine, FakeTransport
from tests.service.polling import wait_until

REQ = "edge/unit/request"


class Harness:
    """Run a Daemon in a thread over a FakeTransport."""

    def __init__(self, state: Path, engine: Any = None, notifier: Notifier | None = None,
                 store: Store | None = None, auto_puback: bool = True, autoconnect: bool = True,
                 **service: Any):
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.transport = FakeTransport(self.events, auto_puback=auto_puback,
                                       autoconnect=autoconnect)
        self.engine = engine or FakeEngine()
        self.store = store or Store(state)
        config = build_config({"service": {"device_id": "unit", "state_dir": str(state),
                                           "stats_interval_s": 60.0, **service}},
                              check_files=False)
        self.daemon = Daemon(config, self.engine, self.transport, self.events, self.store,
                             notifier)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def __enter__(self) -> Harness:
        self.thread.start()
        assert wait_until(lambda: self.daemon.ready)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


def test_request_is_recorded_before_it_is_acknowledged(state: Path) -> None:
    with Harness(state) as h:
        recorded_at_ack: list[int] = []
        h.transport.on_ack = lambda _mid: recorded_at_ack.append(
            h.store._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        mid = h.transport.deliver(REQ, {"id": "a", "prompt": "hi"}, response_topic="r/a")
        assert wait_until(lambda: mid in h.transport.acks)
        assert recorded_at_ack == [1]
        assert wait_until(lambda: bool(h.transport.finals("r/a")))


def test_final_waits_in_the_outbox_until_puback_and_survives_restart(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge_runtime.service.daemon.FLUSH_TIMEOUT_S", 0.3)
    with Harness(state, auto_puback=False) as h:
        h.transport.deliver(REQ, {"id": "b", "prompt": "hi", "max_tokens": 3},
                            response_topic="r/b", correlation_data=b"c1")
        assert wait_until(lambda: bool(h.transport.finals("r/b")))
        assert h.store.outbox_size() == 1, "no PUBACK yet: the reply stays on disk"
    # A new daemon on the same state publishes the reply again, then forgets it on PUBACK.
    with Harness(state) as h2:
        assert wait_until(lambda: bool(h2.transport.finals("r/b")))
        resent = h2.transport.on("r/b")[-1]
        assert resent.correlation == b"c1" and resent.json()["text"] == "w0 w1 w2 "
        assert wait_until(lambda: h2.store.outbox_size() == 0)
        assert h2.engine.calls == 0, "answered from the outbox, not generated again"


def test_accepted_but_unanswered_requests_run_after_a_restart(state: Path) -> None:
    stuck = threading.Event()
    first = Harness(state, engine=FakeEngine(stuck=stuck))
    first.thread.start()
    assert wait_until(lambda: first.daemon.ready)
    for i in range(3):
        first.transport.deliver(REQ, {"id": f"p{i}", "prompt": "hi"}, response_topic=f"r/p{i}")
    assert wait_until(lambda: len(first.transport.acks) == 3)
    # Crash: the first daemon never answers (its thread is abandoned, the store reopened).
    with Harness(state) as second:
        topics = [f"r/p{i}" for i in range(3)]
        assert wait_until(lambda: all(second.transport.finals(t) for t in topics))
    stuck.set()
    first.__exit__()


def test_a_restart_before_the_broker_answers_sends_each_reply_once(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies handed to the transport before its first connect are not published again.

    The previous run left one reply without a PUBACK and three requests unanswered. The
    next run finishes those while the broker does not answer yet (the transport queues the
    replies, as paho does); when the connection comes, no reply may go out twice.
    """
    monkeypatch.setattr("edge_runtime.service.daemon.FLUSH_TIMEOUT_S", 0.3)
    with Harness(state, auto_puback=False) as h:
        h.transport.deliver(REQ, {"id": "b", "prompt": "hi", "max_tokens": 3},
                            response_topic="r/b")
        assert wait_until(lambda: bool(h.transport.finals("r/b")))
    stuck = threading.Event()
    first = Harness(state, engine=FakeEngine(stuck=stuck), auto_puback=False)
    first.thread.start()
    assert wait_until(lambda: first.daemon.ready)
    for i in range(3):
        first.transport.deliver(REQ, {"id": f"p{i}", "prompt": "hi"}, response_topic=f"r/p{i}")
    assert wait_until(lambda: len(first.transport.acks) == 3)
    assert first.store.outbox_size() == 1, "the reply to b is still not acknowledged"
    # Crash: the next run starts, and finishes the resumed requests, before it is connected.
    second = Harness(state, autoconnect=False)
    resumed = [f"r/p{i}" for i in range(3)]
    second.thread.start()
    try:
        assert wait_until(lambda: all(second.transport.finals(t) for t in resumed))
        second.transport.come_online()
        assert wait_until(lambda: second.daemon.ready)
        assert wait_until(lambda: second.store.outbox_size() == 0)
        time.sleep(0.3)  # a second copy would be published within this
        topics = ["r/b", *resumed]
        counts = {t: len(second.transport.finals(t)) for t in topics}
        assert counts == dict.fromkeys(topics, 1), counts
        assert second.engine.calls == 3
    finally:
        second.__exit__()
        stuck.set()
        first.__exit__()


def test_a_puback_is_recorded_at_once_while_other_events_keep_coming(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash just after the broker took a final must not bring it out again: its PUBACK
    is recorded at once, also while publishes of a stream's chunks (paho reports QoS 0
    ones too) keep the loop's queue from running dry."""
    monkeypatch.setattr("edge_runtime.service.daemon.TICK_S", 30.0)
    with Harness(state) as h:
        done = threading.Event()

        def stream() -> None:
            while not done.is_set():
                if h.events.qsize() < 20_000:
                    for _ in range(20_000):  # not one of the daemon's: ignored
                        h.events.put(Published(10**6))
                else:
                    time.sleep(0.001)

        chunks = threading.Thread(target=stream, daemon=True)
        chunks.start()
        try:
            for name in ("a", "b", "c"):
                h.transport.deliver(REQ, {"id": name, "prompt": "hi", "max_tokens": 3},
                                    response_topic=f"r/{name}")
                assert wait_until(lambda n=name: bool(h.transport.finals(f"r/{n}")))
                assert wait_until(lambda: h.store.outbox_size() == 0), f"{name} marked"
        finally:
            done.set()
            chunks.join()


def test_queue_full_is_answered_busy_at_once(state: Path) -> None:
    with Harness(state, engine=FakeEngine(token_s=0.05), queue_size=1) as h:
        for i in range(4):
            h.transport.deliver(REQ, {"id": f"q{i}", "prompt": "hi", "max_tokens": 5},
                                response_topic=f"r/q{i}")
        assert wait_until(lambda: all(h.transport.finals(f"r/q{i}") for i in range(4)))
        codes = [h.transport.finals(f"r/q{i}")[0].get("error", {}).get("code")
                 for i in range(4)]
        assert codes.count("busy") >= 2 and codes[0] is None


def test_generation_past_its_deadline_is_stopped_with_expired(state: Path) -> None:
    with Harness(state, engine=FakeEngine(token_s=0.05), generation_deadline_s=0.3) as h:
        h.transport.deliver(REQ, {"id": "slow", "prompt": "hi", "max_tokens": 1000},
                            response_topic="r/slow")
        assert wait_until(lambda: bool(h.transport.finals("r/slow")))
        final = h.transport.finals("r/slow")[0]
        assert final["error"]["code"] == "expired" and final["text"].startswith("w0 ")


def test_store_failure_is_an_internal_error_reply_not_silence(state: Path) -> None:
    class FullStore(Store):
        def accept(self, *args: Any) -> None:
            raise StoreError("database or disk is full")

    with Harness(state, store=FullStore(state)) as h:
        mid = h.transport.deliver(REQ, {"id": "f", "prompt": "hi"}, response_topic="r/f")
        assert wait_until(lambda: bool(h.transport.finals("r/f")))
        assert h.transport.finals("r/f")[0]["error"]["code"] == "internal"
        assert mid in h.transport.acks
        assert h.daemon.counters.store_errors == 1


def test_status_will_ready_and_stopped(state: Path, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
    h = Harness(state, notifier=notifier)
    with h:
        assert h.transport.will is not None and b'"offline"' in h.transport.will.payload
        assert sock.recv(1024).startswith(b"READY=1")
        status = h.transport.on("edge/unit/status")
        assert status[0].retain and status[0].json()["state"] == "online"
        assert h.transport.on("edge/unit/info")[0].retain
    assert sock.recv(1024).startswith(b"STOPPING=1")
    assert h.transport.on("edge/unit/status")[-1].json()["state"] == "stopped"
    assert h.transport.disconnected
    sock.close()


def test_watchdog_is_fed_only_while_the_worker_makes_progress(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge_runtime.service.daemon.STUCK_GRACE_S", 0.2)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "w.sock"))
    sock.settimeout(0.1)
    env = {"NOTIFY_SOCKET": str(tmp_path / "w.sock"), "WATCHDOG_USEC": "200000"}
    stuck = threading.Event()
    h = Harness(state, engine=FakeEngine(stuck=stuck), notifier=Notifier(env),
                generation_deadline_s=0.3, shutdown_grace_s=0.0)

    def pings(seconds: float) -> int:
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                count += sock.recv(1024) == b"WATCHDOG=1"
        return count

    with h:
        assert pings(1.0) >= 3, "an idle, healthy loop feeds the watchdog"
        h.transport.deliver(REQ, {"id": "hang", "prompt": "hi"}, response_topic="r/hang")
        time.sleep(0.8)  # past the deadline plus the stuck grace
        pings(0.2)  # drop the pings sent before the worker counted as stuck
        assert pings(1.0) == 0, "a stuck generation starves the watchdog"
        stuck.set()
        assert wait_until(lambda: bool(h.transport.finals("r/hang")))
        assert pings(1.0) >= 3
    sock.close()


def test_message_expiry_is_honoured_at_intake_and_in_the_queue(state: Path) -> None:
    engine = FakeEngine(token_s=0.05)
    with Harness(state, engine=engine) as h:
        h.transport.deliver(REQ, {"id": "stale", "prompt": "hi"}, response_topic="r/stale",
                            expiry_s=1, received_at=time.time() - 2)
        h.transport.deliver(REQ, {"id": "long", "prompt": "hi", "max_tokens": 30},
                            response_topic="r/long")
        h.transport.deliver(REQ, {"id": "waits", "prompt": "hi"}, response_topic="r/waits",
                            expiry_s=1)
        assert wait_until(lambda: all(h.transport.finals(t) for t in ("r/stale", "r/waits")))
        for topic in ("r/stale", "r/waits"):
            final = h.transport.finals(topic)[0]
            assert final["error"]["code"] == "expired"
            assert final["usage"]["completion_tokens"] == 0
        assert engine.calls == 1, "only the long request was generated"


def test_cancel_a_running_generation_keeps_the_partial_text(state: Path) -> None:
    with Harness(state, engine=FakeEngine(token_s=0.02)) as h:
        h.transport.deliver(REQ, {"id": "c", "prompt": "hi", "max_tokens": 500},
                            response_topic="r/c")
        assert wait_until(lambda: len(h.transport.on("r/c")) >= 3)  # streaming has begun
        h.transport.deliver("edge/unit/cancel", {"id": "c"})
        assert wait_until(lambda: bool(h.transport.finals("r/c")))
        final = h.transport.finals("r/c")[0]
        assert final["finish_reason"] == "cancelled"
        assert final["text"].startswith("w0 w1 ") and 2 <= final["usage"]["completion_tokens"] < 500


@pytest.mark.parametrize("capacity", [1, 3])
def test_worker_threads_follow_the_engines_capacity(state: Path, capacity: int) -> None:
    """The engine decided how many requests run at once; the daemon does not decide again."""
    with Harness(state, engine=FakeEngine(capacity=capacity), queue_size=32) as h:
        workers = [t for t in threading.enumerate() if t.name.startswith("edge-worker-")]
        assert len(workers) == capacity
        assert len(h.daemon.worker.running) == 0


def test_a_cancelled_id_sent_again_runs_again(state: Path) -> None:
    """A cancel is not kept in the record: reusing the id is a new request, not a replay."""
    engine = FakeEngine(token_s=0.05)
    with Harness(state, engine=engine) as h:
        h.transport.deliver(REQ, {"id": "busy", "prompt": "hi", "max_tokens": 20},
                            response_topic="r/busy")
        h.transport.deliver(REQ, {"id": "k", "prompt": "hi", "max_tokens": 3},
                            response_topic="r/k")
        h.transport.deliver("edge/unit/cancel", {"id": "k"})
        assert wait_until(lambda: bool(h.transport.finals("r/k")))
        assert h.transport.finals("r/k")[0]["finish_reason"] == "cancelled"
        h.transport.deliver(REQ, {"id": "k", "prompt": "hi", "max_tokens": 3},
                            response_topic="r/k")
        assert wait_until(lambda: len(h.transport.finals("r/k")) == 2, 10)
        assert h.transport.finals("r/k")[1]["finish_reason"] == "length"
        assert engine.calls == 2
