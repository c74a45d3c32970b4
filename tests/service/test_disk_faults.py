"""The state folder fails for real: full, read-only, truncated, corrupt, too small for the cache.

Each fault is made on a real file system (a loop-mounted ext4 image or a tmpfs, so these
tests need root): at most one final per request across the fault, nothing accepted lost
once the disk is back, and the daemon neither exits nor refuses to start.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.disk import SmallDisk
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.polling import wait_until
from tests.service.scenarios import REQUEST, exactly_one_final_each, send_long

STATUS = f"edge/{DEVICE}/status"


def _mid_generation(probe: Probe, topic: str) -> None:
    """Wait until ``topic``'s request is well into its generation (no final near)."""
    assert probe.wait_for(lambda _r: len(probe.chunks(topic)) >= 20, 30)


def test_a_full_disk_holds_answers_until_it_has_room_and_none_comes_twice(
    small_disk: Callable[..., SmallDisk],
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    disk = small_disk(16)
    first = daemon_factory(broker, service={"state_dir": str(disk.root / "state")})
    probe = client_factory(broker.port)
    probe.subscribe("full/#")
    probe.subscribe("late/#")
    topics = send_long(probe, "full", 5)
    _mid_generation(probe, topics[0])
    disk.fill()
    late = [f"late/{i}" for i in range(3)]
    for i, topic in enumerate(late):
        probe.publish(REQUEST, {"id": f"late{i}", "prompt": "Hi", "max_tokens": 4},
                      response_topic=topic)
    # Refused while the disk is full; one may slip in while a write finds room for a moment,
    # and then its answer waits like the others.
    def refused(_r: object) -> bool:
        finals = [f for t in late for f in probe.finals(t)]
        return any(f.get("error", {}).get("code") == "internal" for f in finals)

    assert probe.wait_for(refused, 20), [probe.finals(t) for t in late]
    time.sleep(1.0)
    assert not all(probe.finals(t) for t in topics), "answers wait until they are recorded"
    disk.free()
    exactly_one_final_each(probe, topics)
    exactly_one_final_each(probe, late)
    log = first.log()
    assert "database or disk is full" in log
    assert "cannot rollback" not in log, "the real error is not hidden"
    # Everything was recorded: a restart has nothing left to run or send again.
    assert first.terminate() == 0
    second = daemon_factory(broker, like=first)
    exactly_one_final_each(probe, topics + late)
    assert "resuming" not in second.log()


def test_a_read_only_state_folder_then_a_crash_answers_each_request_once(
    small_disk: Callable[..., SmallDisk],
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """The store's files become unwritable mid-run (chattr +i on the folder, the database
    and its WAL: writes to the open files fail), the daemon is killed, the folder is
    repaired and the daemon started again: every accepted request is answered once."""
    disk = small_disk(16)
    state = disk.root / "state"
    first = daemon_factory(broker, service={"state_dir": str(state)})
    probe = client_factory(broker.port)
    probe.subscribe("ro/#")
    topics = send_long(probe, "ro", 5)
    _mid_generation(probe, topics[0])
    store = [state, state / "state.sqlite3", state / "state.sqlite3-wal"]
    disk.freeze(*store)
    probe.publish(REQUEST, {"id": "ro-late", "prompt": "Hi"}, response_topic="ro/late")
    assert probe.wait_final("ro/late")["error"]["code"] == "internal"
    time.sleep(1.5)
    first.kill()
    disk.thaw(*store)
    second = daemon_factory(broker, like=first)
    exactly_one_final_each(probe, [*topics, "ro/late"])
    assert "resuming" in second.log()


def test_a_truncated_store_is_moved_aside_and_the_daemon_serves(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    first = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("trunc/#")
    probe.subscribe(STATUS)
    exactly_one_final_each(probe, send_long(probe, "trunc", 3, max_tokens=8))
    assert first.terminate() == 0
    store = tmp_path / "state" / "state.sqlite3"
    os.truncate(store, 3000)
    second = daemon_factory(broker, like=first)
    probe.publish(REQUEST, {"id": "fresh", "prompt": "Hi", "max_tokens": 4},
                  response_topic="trunc/fresh")
    assert probe.wait_final("trunc/fresh")["finish_reason"] in ("stop", "length")
    assert "moved it aside" in second.log()
    status = probe.on(STATUS)[-1].json()
    assert status["state"] == "online"
    assert status["store"]["moved_aside"].startswith("state.sqlite3.corrupt-"), status
    assert (tmp_path / "state" / status["store"]["moved_aside"]).is_file()


def test_a_damaged_record_is_answered_and_the_others_resume(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    first = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("dmg/#")
    topics = send_long(probe, "dmg", 5)
    _mid_generation(probe, topics[0])
    assert wait_until(lambda: "accepted dmg4" in first.log(), 10)
    first.kill()
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "state.sqlite3")) as db:
        cut = db.execute("UPDATE requests SET record = substr(record, 1, 30) "
                         "WHERE key LIKE 'dmg4%' AND state = 'pending'").rowcount
        db.commit()
    assert cut == 1
    second = daemon_factory(broker, like=first)
    exactly_one_final_each(probe, topics)
    damaged = probe.finals(topics[4])[0]
    assert damaged["error"]["code"] == "internal" and "damaged" in damaged["error"]["message"]
    assert all(probe.finals(t)[0]["finish_reason"] == "length" for t in topics[:4])
    assert "skipping the damaged record" in second.log()


def test_corruption_while_running_never_stops_the_daemon(
    tmp_path: Path,
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon = daemon_factory(broker, service={"stats_interval_s": 0.5})
    probe = client_factory(broker.port)
    probe.subscribe("live/#")
    probe.subscribe(f"edge/{DEVICE}/stats")
    exactly_one_final_each(probe, send_long(probe, "live", 40, max_tokens=2))
    store = tmp_path / "state" / "state.sqlite3"
    with contextlib.closing(sqlite3.connect(store)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(store, "r+b") as fh:  # every page but the first: garbage
        fh.seek(4096)
        fh.write(os.urandom(max(os.path.getsize(store) - 4096, 4096)))
    with contextlib.closing(sqlite3.connect(store)) as db:  # another writer: caches go stale
        db.execute("CREATE TABLE poke (x)")
        db.commit()
    seen = len(probe.on(f"edge/{DEVICE}/stats"))
    assert probe.wait_for(lambda _r: len(probe.on(f"edge/{DEVICE}/stats")) >= seen + 3, 10)
    probe.publish(REQUEST, {"id": "after", "prompt": "Hi", "max_tokens": 4},
                  response_topic="live/after")
    assert probe.wait_final("live/after")["finish_reason"] in ("stop", "length")
    time.sleep(1.0)
    assert daemon.alive
    assert "moved it aside" in daemon.log()
    stats = probe.on(f"edge/{DEVICE}/stats")[-1].json()
    assert stats["store"]["moved_aside"], stats["store"]


def test_an_unwritable_graph_cache_is_skipped_and_leaves_nothing(
    small_disk: Callable[..., SmallDisk],
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """A state folder with room for the store but not for the optimized graph: the model
    loads without the cache, with a warning, and no staging folder is left behind (one
    left by a process that died while writing is removed too)."""
    disk = small_disk(0.4, kind="tmpfs")
    state = disk.root / "state"
    cache = state / "ort-cache"
    (cache / "0123abcd.tmp-999999").mkdir(parents=True)
    (cache / "0123abcd.tmp-999999" / "model.onnx").write_bytes(b"\0" * 1000)
    daemon = daemon_factory(broker, service={"state_dir": str(state)})
    probe = client_factory(broker.port)
    probe.subscribe("cache/#")
    probe.publish(REQUEST, {"id": "c", "prompt": "Hi", "max_tokens": 4},
                  response_topic="cache/c")
    assert probe.wait_final("cache/c")["finish_reason"] in ("stop", "length")
    assert "cannot write optimized graph cache" in daemon.log()
    assert [p.name for p in cache.iterdir() if ".tmp-" in p.name] == []
    assert daemon.alive
