"""The state store on its own: schema upgrade, size bound, corruption, errors that say why."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.service.store import Store, StoreError
from tests.fixtures.disk import SmallDisk

# The schema the daemon wrote before version 2 (one table per purpose).
VERSION_1 = """
CREATE TABLE requests (key TEXT PRIMARY KEY, record TEXT NOT NULL, state TEXT NOT NULL,
    final TEXT, created REAL NOT NULL, finished REAL);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    payload BLOB NOT NULL, correlation BLOB, created REAL NOT NULL);
"""


def _record(request_id: str, topic: str) -> str:
    return json.dumps({"id": request_id, "body": {"prompt": "hi"}, "reply_topic": topic,
                       "correlation": "c0ffee", "deadline": None})


def _accept(store: Store, request_id: str, topic: str = "r/t") -> str:
    key = f"{request_id}\n{topic}"
    store.accept(key, "d" * 32, _record(request_id, topic), topic, b"\xc0\xff\xee")
    return key


def test_a_version_1_store_keeps_its_pending_requests_answers_and_outbox(
    tmp_path: Path,
) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db:
        db.executescript(VERSION_1)
        db.execute("INSERT INTO requests VALUES (?, ?, 'pending', NULL, 1, NULL)",
                   ("p\nr/p", _record("p", "r/p")))
        db.execute("INSERT INTO requests VALUES (?, ?, 'done', ?, 1, 2)",
                   ("d\nr/d", _record("d", "r/d"), json.dumps({"id": "d", "text": "old"})))
        db.execute("INSERT INTO outbox (topic, payload, correlation, created) "
                   "VALUES ('r/o', ?, NULL, 3)", (b'{"id": "o"}',))
        db.commit()
    store = Store(tmp_path)
    pending = store.pending()
    assert [(p.key, p.topic, p.correlation) for p in pending] == [("p\nr/p", "r/p",
                                                                   b"\xc0\xff\xee")]
    done = store.lookup("d\nr/d")
    assert done is not None and done.final == {"id": "d", "text": "old"}
    assert [(i.topic, i.payload) for i in store.outbox()] == [("r/o", b'{"id": "o"}')]
    assert store.outbox_size() == 1
    store.delivered([store.outbox()[0].key])
    assert store.outbox() == [] and store.outbox_size() == 0


def test_a_request_goes_pending_answered_delivered_and_its_text_is_dropped(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    key = _accept(store, "a")
    item = store.finish(key, {"id": "a", "text": "answer"}, "r/t", b"\x01")
    assert store.outbox_size() == 1 and store.outbox() == [item]
    row = store._db.execute("SELECT record, state FROM requests").fetchone()
    assert row == (None, "done"), "the request text is not kept once it is answered"
    store.delivered([key])
    assert store.outbox_size() == 0
    found = store.lookup(key)
    assert found is not None and found.final == {"id": "a", "text": "answer"}


def test_a_transient_answer_is_forgotten_once_delivered(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key = _accept(store, "t")
    store.finish(key, {"id": "t", "error": {"code": "busy"}}, "r/t", None, forget=True)
    assert store.lookup(key) is None, "a transient answer does not answer repeats"
    _accept(store, "t")  # the same id again is accepted, replacing it
    assert store.outbox_size() == 0 and len(store.pending()) == 1


def test_refused_finals_are_kept_for_the_next_start_but_not_counted_waiting(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    key = _accept(store, "x")
    store.finish(key, {"id": "x"}, "r/t", None)
    store.refused([key])
    assert store.outbox_size() == 0
    assert [i.key for i in Store(tmp_path).outbox()] == [key]


def test_the_size_bound_forgets_the_oldest_answers_but_never_pending_ones(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    for i in range(300):
        key = _accept(store, f"old{i}")
        store.finish(key, {"id": f"old{i}", "text": "w " * 400}, "r/t", None)
        store.delivered([key])
    pending = _accept(store, "waiting")
    before = store.used_bytes()
    assert store.shrink(before // 4)
    assert store.used_bytes() <= before // 4
    assert store.lookup("old0\nr/t") is None and store.lookup("old299\nr/t") is not None
    assert [p.key for p in store.pending()] == [pending]
    assert not store.shrink(1024), "pending requests are never dropped to make room"


def test_a_store_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"this is not sqlite" * 300)
    store = Store(tmp_path)
    assert store.moved_aside is not None and store.moved_aside.is_file()
    assert store.moved_aside.read_bytes().startswith(b"this is not sqlite")
    _accept(store, "fresh")
    assert len(store.pending()) == 1


def test_a_full_disk_is_reported_as_such(
    tmp_path: Path, small_disk: Callable[..., SmallDisk]
) -> None:
    disk = small_disk(1, kind="tmpfs")
    store = Store(disk.root / "state")
    disk.fill()
    with pytest.raises(StoreError) as caught:
        for i in range(50):
            _accept(store, f"f{i}", "r/" + "t" * 200)
    assert "database or disk is full" in caught.value.message
    assert "rollback" not in caught.value.message
    disk.free()
    _accept(store, "after")


def test_an_unwritable_state_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the state folder"):
        Store(blocker / "state")
    assert not os.path.exists(blocker / "state")
