"""The durable record: accepted requests and their final replies (sqlite, WAL).

One row per accepted request, keyed by its id and reply topic. A row is written three
times: when the request is accepted (the request, synced), when it is answered (the final
reply replaces the request text, synced), and when the broker has the final (a flag,
batched and not synced: a power cut may lose it, a crash does not). Refusals are never
written. Used from the daemon's main thread only.

A store that sqlite finds corrupt, at open or later, is moved aside and a fresh one is
started (:attr:`Store.moved_aside` names the old file); the daemon reports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_runtime.errors import InternalError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT,
    topic TEXT NOT NULL,
    correlation BLOB,
    final TEXT,
    sent INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    finished REAL
);
"""
# state: pending (accepted, not answered), done (answered; kept to answer repeats),
# transient (answered with a code that is not kept: deleted once the broker has it),
# quarantined (a damaged record nobody can be told about).
# sent: 0 the final waits for the broker, 1 delivered, 2 refused by the broker.
UNSENT, DELIVERED, REFUSED = 0, 1, 2
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_PRUNE_BATCH = 64
PAGE_SIZE = 1024
_FORGETTABLE = "((state = 'done' AND sent != 0) OR state = 'quarantined')"
"""Rows that only serve repeats: answered and handed to the broker (or refused by it)."""
T = TypeVar("T")


class StoreError(InternalError):
    """The state folder cannot be written or read (disk full, read-only, I/O error)."""


class StoreCorrupt(StoreError):
    """sqlite found the store file damaged."""


@dataclass(frozen=True)
class OutboxItem:
    """A final reply that waits for the broker's acknowledgement."""

    key: str
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass(frozen=True)
class Record:
    """What the store knows of a request id: its state, content digest and final reply."""

    state: str
    digest: str
    final: dict[str, Any] | None


@dataclass(frozen=True)
class Pending:
    """An accepted request not yet answered, as recorded."""

    key: str
    record: str
    topic: str
    correlation: bytes | None
    attempts: int
    """How many times it was started again after a restart (see docs/protocol.md)."""


def _error(action: str, path: Path, exc: sqlite3.Error) -> StoreError:
    name = getattr(exc, "sqlite_errorname", "")
    cls = StoreCorrupt if name in _CORRUPT else StoreError
    return cls(f"cannot {action} the state store {path}: {exc}")


class Store:
    """Accepted requests and pending replies, in ``<state_dir>/state.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.sqlite3"
        self.moved_aside: Path | None = None
        self._unsent = 0
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the state folder {state_dir}: {exc}") from None
        try:
            self._db = self._open()
        except StoreCorrupt as exc:
            self._db = self._start_over(exc)

    # ----- opening ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # Small pages: a commit rewrites whole pages, and most commits change one row.
            # Only a new file takes it; an existing store keeps its page size.
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreCorrupt(f"the state store {self.path} is damaged: {check}")
            _migrate(db)
            self._unsent = int(db.execute(
                "SELECT COUNT(*) FROM requests WHERE final IS NOT NULL AND sent = 0"
            ).fetchone()[0])
            return db
        except sqlite3.Error as exc:
            db.close()
            raise _error("open", self.path, exc) from None
        except StoreError:
            db.close()
            raise

    def _start_over(self, why: StoreError) -> sqlite3.Connection:
        """Move a corrupt store aside (with its WAL) and open a fresh one."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(Path(f"{aside}{suffix}"))
        except OSError as exc:
            raise StoreError(f"{why.message}; moving it aside failed: {exc}") from None
        log.error("%s; moved it aside to %s and started a fresh store: requests it held "
                  "are not resumed", why.message, aside.name)
        self.moved_aside = aside
        self._unsent = 0
        return self._open()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    # ----- plumbing --------------------------------------------------------------------
    def _guarded(self, action: str, run: Callable[[], T]) -> T:
        """Run ``run``; a corrupt store is replaced once and ``run`` tried on the new one."""
        try:
            return self._attempt(action, run)
        except StoreCorrupt as exc:
            self.close()
            self._db = self._start_over(exc)
            return self._attempt(action, run)

    def _attempt(self, action: str, run: Callable[[], T]) -> T:
        try:
            return run()
        except sqlite3.Error as exc:
            raise _error(action, self.path, exc) from None

    def _write(
        self, statements: list[tuple[str, tuple[Any, ...]]], *, durable: bool = True
    ) -> list[int]:
        """Run statements in one transaction; return each one's row count.

        ``durable=False`` commits without syncing: the change survives a crash of this
        process but may be lost to a power cut.
        """
        def run() -> list[int]:
            db = self._db
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                counts = [db.execute(sql, args).rowcount for sql, args in statements]
                db.execute("COMMIT")
                return counts
            except BaseException:
                # sqlite ends the transaction itself on some errors (a full disk): rolling
                # back then would replace the real error with "no transaction is active".
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            finally:
                if not durable:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA synchronous=FULL")

        return self._guarded("write", run)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return self._guarded("read", lambda: self._db.execute(sql, args).fetchall())

    # ----- requests --------------------------------------------------------------------
    def lookup(self, key: str) -> Record | None:
        """Return what is recorded under ``key``; a transient answer counts as nothing."""
        rows = self._read("SELECT state, digest, final FROM requests WHERE key = ?", (key,))
        if not rows or rows[0][0] == "transient":
            return None
        state, digest, final = rows[0]
        return Record(state, digest, json.loads(final) if final else None)

    def accept(
        self, key: str, digest: str, record: str, topic: str, correlation: bytes | None
    ) -> None:
        """Record an accepted request (state pending), replacing a transient answer."""
        counts = self._write([
            ("DELETE FROM requests WHERE key = ? AND state = 'transient'", (key,)),
            ("INSERT INTO requests (key, digest, state, record, topic, correlation, created) "
             "VALUES (?, ?, 'pending', ?, ?, ?, ?)",
             (key, digest, record, topic, correlation, time.time())),
        ])
        self._unsent -= counts[0]

    def pending(self) -> list[Pending]:
        """Return the accepted requests not yet answered, oldest first."""
        rows = self._read("SELECT key, record, topic, correlation, attempts FROM requests "
                          "WHERE state = 'pending' ORDER BY created")
        return [Pending(r[0], r[1] or "", r[2], r[3], int(r[4])) for r in rows]

    def mark_attempt(self, key: str) -> None:
        """Count one more start of a resumed request, before it runs."""
        self._write([("UPDATE requests SET attempts = attempts + 1 WHERE key = ?", (key,))])

    def quarantine(self, key: str) -> None:
        """Set aside a pending request whose record cannot be read nor answered."""
        self._write([("UPDATE requests SET state = 'quarantined', finished = ? WHERE key = ?",
                      (time.time(), key))])

    def finish(
        self,
        key: str,
        final: dict[str, Any],
        topic: str,
        correlation: bytes | None,
        *,
        forget: bool = False,
    ) -> OutboxItem:
        """Record the final reply of ``key`` (to be published), dropping the request text.

        ``forget`` keeps it only until the broker has it (a transient answer such as
        ``shutting_down``), so the same id sent again later is served anew.
        """
        text = json.dumps(final)
        state = "transient" if forget else "done"
        now = time.time()
        self._write([(
            "INSERT INTO requests (key, digest, state, topic, correlation, final, created, "
            "finished) VALUES (?, '', ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "state = excluded.state, final = excluded.final, topic = excluded.topic, "
            "correlation = excluded.correlation, record = NULL, sent = 0, "
            "finished = excluded.finished",
            (key, state, topic, correlation, text, now, now),
        )])
        self._unsent += 1
        return OutboxItem(key, topic, text.encode(), correlation)

    # ----- the outbox ------------------------------------------------------------------
    def delivered(self, keys: Iterable[str]) -> None:
        """Note that the broker has these finals (one unsynced transaction)."""
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for key in keys:
            statements += [
                ("DELETE FROM requests WHERE key = ? AND state = 'transient'", (key,)),
                ("UPDATE requests SET sent = 1 WHERE key = ? AND state = 'done' AND sent != 1",
                 (key,)),
            ]
        if statements:
            self._unsent -= sum(self._write(statements, durable=False))
            self._unsent = max(self._unsent, 0)

    def refused(self, keys: Iterable[str]) -> None:
        """Note that the broker refused these finals: kept, published again at the next start."""
        statements = [("UPDATE requests SET sent = 2 WHERE key = ? AND final IS NOT NULL "
                       "AND sent = 0", (key,)) for key in keys]
        if statements:
            self._unsent -= sum(self._write(statements, durable=False))
            self._unsent = max(self._unsent, 0)

    def outbox(self) -> list[OutboxItem]:
        """Return the finals the broker has not acknowledged (refused ones too), oldest first."""
        rows = self._read("SELECT key, topic, final, correlation FROM requests "
                          "WHERE final IS NOT NULL AND sent != 1 ORDER BY finished")
        return [OutboxItem(r[0], r[1], r[2].encode(), r[3]) for r in rows]

    def outbox_size(self) -> int:
        """Return how many finals wait for the broker (kept in memory: no disk access)."""
        return self._unsent

    # ----- size ------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Return the bytes the store's pages hold (free pages not counted)."""
        pages = self._read("SELECT page_count - freelist_count FROM pragma_page_count(), "
                           "pragma_freelist_count()")[0][0]
        size = self._read("PRAGMA page_size")[0][0]
        return int(pages) * int(size)

    def prune(self, older_than_s: float) -> int:
        """Forget answered requests older than ``older_than_s``; return how many."""
        cutoff = time.time() - older_than_s
        return self._write([(
            f"DELETE FROM requests WHERE {_FORGETTABLE} AND finished < ?", (cutoff,),
        )], durable=False)[0]

    def shrink(self, max_bytes: int) -> bool:
        """Forget the oldest answered requests until the store is under ``max_bytes``.

        Return whether it is. Pending requests and finals that wait for the broker stay.
        """
        while self.used_bytes() > max_bytes:
            removed = self._write([(
                f"DELETE FROM requests WHERE key IN (SELECT key FROM requests WHERE "
                f"{_FORGETTABLE} ORDER BY finished LIMIT ?)",
                (_PRUNE_BATCH,),
            )], durable=False)[0]
            if removed == 0:
                return False
        return True


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, converting a store written before schema version 2."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.execute("BEGIN IMMEDIATE")
    try:
        if "outbox" in tables:
            _from_version_1(db)
        db.execute(SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _reply_of(record: str) -> tuple[str, bytes | None]:
    """Read the reply place from a version 1 record; ("", None) if it is damaged."""
    try:
        data = json.loads(record)
        corr = data.get("correlation")
        return str(data["reply_topic"]), bytes.fromhex(corr) if corr else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", None


def _from_version_1(db: sqlite3.Connection) -> None:
    """Move version 1's requests and outbox tables into the one table of version 2."""
    old = db.execute("SELECT key, record, state, final, created, finished FROM requests")
    rows = old.fetchall()
    outbox = db.execute("SELECT seq, topic, payload, correlation, created FROM outbox").fetchall()
    db.execute("DROP TABLE requests")
    db.execute("DROP TABLE outbox")
    db.execute(SCHEMA)
    insert = ("INSERT INTO requests (key, digest, state, record, topic, correlation, final, "
              "sent, created, finished) VALUES (?, '', ?, ?, ?, ?, ?, ?, ?, ?)")
    for key, record, state, final, created, finished in rows:
        topic, corr = _reply_of(record)
        if state == "pending":
            db.execute(insert, (key, "pending", record, topic, corr, None, 0, created, None))
        else:
            db.execute(insert, (key, "done", None, topic, corr, final, 1, created, finished))
    for seq, topic, payload, corr, created in outbox:
        text = bytes(payload).decode("utf-8", "replace")
        db.execute(insert, (f"outbox:{seq}", "transient", None, topic, corr, text, 0,
                            created, created))
