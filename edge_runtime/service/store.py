"""The durable record: accepted requests and the outbox of final replies (sqlite, WAL).

Used from the daemon's main thread only. Every write commits before it returns, so once
``accept`` returns the request survives a crash, and once ``finish`` returns its reply will
be published (again) after a restart until the broker acknowledges it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import InternalError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    final TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    correlation BLOB,
    created REAL NOT NULL
);
"""


class StoreError(InternalError):
    """The state folder cannot be written (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass(frozen=True)
class Record:
    record: str
    state: str
    final: dict[str, Any] | None


class Store:
    """Accepted requests and pending replies, in ``<state_dir>/state.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.path = state_dir / "state.sqlite3"
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state store in {state_dir}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int | None:
        """Run statements in one transaction; return the last row id."""
        try:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    cur.execute(sql, args)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return cur.lastrowid
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the state store {self.path}: {exc}") from None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the state store {self.path}: {exc}") from None

    def lookup(self, key: str) -> Record | None:
        """Return the record of an accepted request, if any."""
        rows = self._read("SELECT record, state, final FROM requests WHERE key = ?", (key,))
        row = rows[0] if rows else None
        if row is None:
            return None
        return Record(row[0], row[1], json.loads(row[2]) if row[2] else None)

    def accept(self, key: str, record: str) -> None:
        """Record an accepted request (state pending)."""
        self._write([(
            "INSERT INTO requests (key, record, state, created) VALUES (?, ?, 'pending', ?)",
            (key, record, time.time()),
        )])

    def pending(self) -> list[str]:
        """Return the records of accepted requests not yet answered, oldest first."""
        rows = self._read("SELECT record FROM requests WHERE state = 'pending' ORDER BY created")
        return [r[0] for r in rows]

    def finish(
        self,
        key: str | None,
        final: dict[str, Any],
        topic: str,
        correlation: bytes | None,
        *,
        forget: bool = False,
    ) -> OutboxItem:
        """Mark a request answered (if ``key``) and queue its final reply, atomically.

        ``forget`` drops the record instead (a transient refusal such as ``shutting_down``),
        so the same id sent again later is served rather than answered from the record.
        """
        payload = json.dumps(final).encode()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if key is not None and forget:
            statements.append(("DELETE FROM requests WHERE key = ?", (key,)))
        elif key is not None:
            statements.append((
                "UPDATE requests SET state = 'done', final = ?, finished = ? WHERE key = ?",
                (payload.decode(), time.time(), key),
            ))
        statements.append((
            "INSERT INTO outbox (topic, payload, correlation, created) VALUES (?, ?, ?, ?)",
            (topic, payload, correlation, time.time()),
        ))
        seq = self._write(statements)
        assert seq is not None
        return OutboxItem(seq, topic, payload, correlation)

    def delivered(self, seq: int) -> None:
        """Drop an outbox entry once the broker has acknowledged it."""
        self._write([("DELETE FROM outbox WHERE seq = ?", (seq,))])

    def outbox(self) -> list[OutboxItem]:
        rows = self._read("SELECT seq, topic, payload, correlation FROM outbox ORDER BY seq")
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def outbox_size(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM outbox")[0][0])

    def prune(self, older_than_s: float) -> int:
        """Forget answered requests older than ``older_than_s``; return how many."""
        cutoff = time.time() - older_than_s
        cur = self._db.execute(
            "DELETE FROM requests WHERE state = 'done' AND finished < ?", (cutoff,)
        )
        return cur.rowcount
