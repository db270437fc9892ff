"""The SQLite store: snapshots, events, the delivery outbox and watch health.

One file in WAL mode, reached through one connection that lives on one
dedicated thread: sqlite3 connections are not safe to share between
threads, and a single writer thread also keeps the event loop free while a
100,000-record snapshot is written. Every public method is a coroutine that
hands its work to that thread.

Tables (created in ``notifier._migrations``): ``watches`` (generation,
fingerprint and health per watch), ``snapshot_records`` (one row per record
of the last complete snapshot), ``events`` (the event JSON of every
change), and ``deliveries`` (one row per event and channel target: the
outbox), plus a small ``meta`` key-value table for delivery bookkeeping. No
table holds a token, a webhook secret or an Apprise URL: targets are stored
by channel name and URL index.

The store keeps the last snapshot of each watch it committed in memory, so
a steady daemon never decodes a large snapshot twice; the generation
stored in SQLite decides whether that copy is still current (another
process, such as ``atleta-notifier poll``, may have committed meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from notifier._migrations import migrations
from notifier.errors import GenerationConflict, StoreError
from notifier.model import (
    Delivery,
    Event,
    PollCommit,
    Snapshot,
    SnapshotRecord,
    Target,
    Watch,
    WatchState,
    canonical_json,
    isoformat,
    parse_isoformat,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_DELIVERY_COLUMNS = (
    "d.id, d.event_id, d.channel, d.target, d.status, d.attempts, "
    "d.next_attempt_at, d.created_at, d.last_error, d.delivered_at"
)


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        event_id=row[1],
        channel=row[2],
        target=row[3],
        status=row[4],
        attempts=row[5],
        next_attempt_at=parse_isoformat(row[6]),
        created_at=parse_isoformat(row[7]),
        last_error=row[8],
        delivered_at=parse_isoformat(row[9]) if row[9] else None,
    )


def _event(body: str) -> Event:
    return Event.from_json(json.loads(body))


class Store:
    """The notifier's SQLite file, used from asyncio through one thread."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, db: Database) -> None:
        self.path = path
        self._executor = executor
        self._db = db
        self._snapshots: dict[str, Snapshot] = {}

    @classmethod
    async def open(cls, path: Path | str) -> Store:
        """Open (creating and migrating as needed) the SQLite file at ``path``.

        :raises StoreError: when the file cannot be opened or migrated.
        """
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(executor, _connect, path)
        except (sqlite3.Error, OSError) as error:
            executor.shutdown(wait=False)
            raise StoreError(
                f"cannot open the database {str(path)!r}: {error}"
            ) from error
        return cls(path, executor, db)

    async def close(self) -> None:
        """Close the connection and stop the store's thread."""
        await self._run(self._db.conn.close)
        self._executor.shutdown(wait=True)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction that takes the write lock up front.

        A deferred ``BEGIN`` would take it at the first write, after the
        generation check read, and two processes committing the same watch
        could then fail with "database is locked" instead of one of them
        seeing the new generation.
        """
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(fn, *args))
        except sqlite3.Error as error:
            raise StoreError(f"database {str(self.path)!r}: {error}") from error

    # Snapshots and polls

    async def snapshot(self, watch_id: str) -> Snapshot:
        """The last committed snapshot of a watch (generation 0 when never polled)."""
        return await self._run(self._snapshot, watch_id)

    def _snapshot(self, watch_id: str) -> Snapshot:
        row = self._db.execute(
            "SELECT generation, fingerprint FROM watches WHERE id = ?", [watch_id]
        ).fetchone()
        if row is None:
            return Snapshot(watch=watch_id)
        cached = self._snapshots.get(watch_id)
        if cached is not None and cached.generation == row[0]:
            return cached
        records: dict[str, SnapshotRecord] = {}
        missing: dict[str, int] = {}
        rows = self._db.execute(
            "SELECT key, hash, record, misses FROM snapshot_records WHERE watch = ?",
            [watch_id],
        )
        for key, digest, record, misses in rows:
            records[key] = SnapshotRecord(hash=digest, record=json.loads(record))
            if misses:
                missing[key] = misses
        snapshot = Snapshot(
            watch=watch_id,
            generation=row[0],
            fingerprint=row[1],
            records=records,
            missing=missing,
        )
        self._snapshots[watch_id] = snapshot
        return snapshot

    async def commit_poll(
        self, commit: PollCommit, *, watch: Watch, records: int, now: datetime
    ) -> int:
        """Write one poll's snapshot, events and deliveries in one transaction.

        :returns: the watch's new generation.
        :raises GenerationConflict: when the watch is no longer at
            ``commit.expected_generation``; nothing is written then.
        """
        return await self._run(self._commit_poll, commit, watch, records, now)

    def _commit_poll(
        self, commit: PollCommit, watch: Watch, records: int, now: datetime
    ) -> int:
        db = self._db
        with self._write():
            row = db.execute(
                "SELECT generation FROM watches WHERE id = ?", [commit.watch]
            ).fetchone()
            current = row[0] if row else 0
            if current != commit.expected_generation:
                raise GenerationConflict(
                    commit.watch, commit.expected_generation, current
                )
            self._write_records(commit)
            generation = current + 1
            stamp = isoformat(now)
            db.execute(
                """
                INSERT INTO watches (id, project, name, generation, fingerprint,
                    records, last_poll_at, last_success_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    generation = excluded.generation,
                    fingerprint = excluded.fingerprint,
                    records = excluded.records,
                    last_poll_at = excluded.last_poll_at,
                    last_success_at = excluded.last_success_at,
                    consecutive_failures = 0,
                    last_error_kind = NULL,
                    last_error = NULL
                """,
                [
                    commit.watch,
                    watch.project.id,
                    watch.name,
                    generation,
                    commit.fingerprint,
                    records,
                    stamp,
                    stamp,
                ],
            )
            self._insert_events(commit.events, commit.deliveries, now)
        self._remember(commit, generation)
        return generation

    def _write_records(self, commit: PollCommit) -> None:
        conn = self._db.conn
        if commit.replace_all:
            conn.execute("DELETE FROM snapshot_records WHERE watch = ?", [commit.watch])
        elif commit.deletes:
            conn.executemany(
                "DELETE FROM snapshot_records WHERE watch = ? AND key = ?",
                [(commit.watch, key) for key in commit.deletes],
            )
        conn.executemany(
            """
            INSERT INTO snapshot_records (watch, key, hash, record, misses)
            VALUES (?, ?, ?, ?, 0)
            ON CONFLICT (watch, key) DO UPDATE SET
                hash = excluded.hash, record = excluded.record, misses = 0
            """,
            [
                (commit.watch, key, item.hash, item.text or canonical_json(item.record))
                for key, item in commit.upserts.items()
            ],
        )
        conn.execute(
            "UPDATE snapshot_records SET misses = 0 WHERE watch = ? AND misses > 0",
            [commit.watch],
        )
        conn.executemany(
            "UPDATE snapshot_records SET misses = ? WHERE watch = ? AND key = ?",
            [(misses, commit.watch, key) for key, misses in commit.missing.items()],
        )

    def _remember(self, commit: PollCommit, generation: int) -> None:
        """Keep the committed snapshot in memory when its base was cached."""
        base = self._snapshots.get(commit.watch)
        if commit.replace_all:
            records: dict[str, SnapshotRecord] = {}
        elif base is not None and base.generation == commit.expected_generation:
            records = dict(base.records)
        else:
            self._snapshots.pop(commit.watch, None)
            return
        for key in commit.deletes:
            records.pop(key, None)
        # The encoded text only served the write; the copy kept in memory
        # would otherwise hold every record twice.
        records.update(
            (key, SnapshotRecord(hash=item.hash, record=item.record))
            if item.text is not None
            else (key, item)
            for key, item in commit.upserts.items()
        )
        self._snapshots[commit.watch] = Snapshot(
            watch=commit.watch,
            generation=generation,
            fingerprint=commit.fingerprint,
            records=records,
            missing=dict(commit.missing),
        )

    def _insert_events(
        self,
        events: Iterable[Event],
        deliveries: Iterable[tuple[str, Target]],
        now: datetime,
    ) -> None:
        conn = self._db.conn
        conn.executemany(
            """
            INSERT OR IGNORE INTO events
                (id, watch, project, type, occurred_at, key, body)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """,
            [
                (
                    event.id,
                    f"{event.project.id}/{event.watch}",
                    event.project.id,
                    event.type,
                    isoformat(event.occurred_at),
                    event.key,
                    canonical_json(event.to_json()),
                )
                for event in events
            ],
        )
        stamp = isoformat(now)
        conn.executemany(
            """
            INSERT OR IGNORE INTO deliveries
                (event_id, channel, target, next_attempt_at, created_at)
            VALUES (?, ?, ?, ?, ?)
            """,
            [
                (event_id, target.channel, target.index, stamp, stamp)
                for event_id, target in deliveries
            ],
        )

    async def add_events(
        self,
        events: Sequence[Event],
        deliveries: Sequence[tuple[str, Target]],
        *,
        now: datetime,
    ) -> None:
        """Record events outside a poll (alerts), with their pending deliveries.

        Idempotent: an event id or (event, target) pair already stored is kept.
        """
        await self._run(self._add_events, events, deliveries, now)

    def _add_events(
        self,
        events: Sequence[Event],
        deliveries: Sequence[tuple[str, Target]],
        now: datetime,
    ) -> None:
        with self._write():
            self._insert_events(events, deliveries, now)

    # Watch health

    async def record_failure(
        self, watch: Watch, *, kind: str, message: str, now: datetime
    ) -> WatchState:
        """Count one more failed poll of ``watch``; the snapshot is not touched."""
        return await self._run(self._record_failure, watch, kind, message, now)

    def _record_failure(
        self, watch: Watch, kind: str, message: str, now: datetime
    ) -> WatchState:
        with self._write():
            self._db.execute(
                """
                INSERT INTO watches (id, project, name, last_poll_at,
                    consecutive_failures, last_error_kind, last_error)
                VALUES (?, ?, ?, ?, 1, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    last_poll_at = excluded.last_poll_at,
                    consecutive_failures = consecutive_failures + 1,
                    last_error_kind = excluded.last_error_kind,
                    last_error = excluded.last_error
                """,
                [watch.id, watch.project.id, watch.name, isoformat(now), kind, message],
            )
        state = self._watch_state(watch.id)
        assert state is not None
        return state

    async def set_failing_alerted(self, watch_id: str, alerted: bool) -> None:
        """Remember whether the "failing" alert of a watch went out."""
        await self._run(
            self._execute_write,
            "UPDATE watches SET failing_alerted = ? WHERE id = ?",
            [int(alerted), watch_id],
        )

    async def watch_state(self, watch_id: str) -> WatchState | None:
        """The health of one watch, or None when it never polled."""
        return await self._run(self._watch_state, watch_id)

    async def watch_states(self) -> list[WatchState]:
        """The health of every watch the store has seen, by id."""
        return await self._run(self._watch_states)

    _STATE_SQL = """
        SELECT id, project, name, generation, records, last_poll_at,
            last_success_at, consecutive_failures, last_error_kind, last_error,
            failing_alerted,
            (SELECT COUNT(*) FROM snapshot_records
                WHERE watch = watches.id AND misses > 0)
        FROM watches
    """

    def _watch_state(self, watch_id: str) -> WatchState | None:
        row = self._db.execute(self._STATE_SQL + " WHERE id = ?", [watch_id]).fetchone()
        return _watch_state(row) if row else None

    def _watch_states(self) -> list[WatchState]:
        rows = self._db.execute(self._STATE_SQL + " ORDER BY id").fetchall()
        return [_watch_state(row) for row in rows]

    # Events

    async def event(self, event_id: str) -> Event | None:
        """One recorded event by id."""
        return await self._run(self._event_by_id, event_id)

    def _event_by_id(self, event_id: str) -> Event | None:
        row = self._db.execute(
            "SELECT body FROM events WHERE id = ?", [event_id]
        ).fetchone()
        return _event(row[0]) if row else None

    async def events(
        self,
        *,
        project: str | None = None,
        watch: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Recorded events, newest first.

        ``watch`` is a watch id (``AB12/registrations``); ``type`` matches
        exactly or, ending in ``.*``, by prefix (``registration.*``).
        """
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("project", project), ("watch", watch)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if type is not None:
            if type.endswith(".*"):
                clauses.append("type LIKE ?")
                params.append(type[:-1] + "%")
            else:
                clauses.append("type = ?")
                params.append(type)
        if since is not None:
            clauses.append("occurred_at >= ?")
            params.append(isoformat(since))
        if until is not None:
            clauses.append("occurred_at < ?")
            params.append(isoformat(until))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT body FROM events {where} ORDER BY occurred_at DESC, id LIMIT ?"
        rows = await self._run(self._fetchall, sql, [*params, limit])
        return [_event(row[0]) for row in rows]

    # The delivery outbox

    async def due_deliveries(
        self, now: datetime, *, limit: int = 1000
    ) -> list[tuple[Delivery, Event]]:
        """Pending deliveries whose next attempt is due, oldest first."""
        sql = f"""
            SELECT {_DELIVERY_COLUMNS}, e.body
            FROM deliveries d JOIN events e ON e.id = d.event_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= ?
            ORDER BY d.next_attempt_at, d.id
            LIMIT ?
        """
        rows = await self._run(self._fetchall, sql, [isoformat(now), limit])
        return [(_delivery(row), _event(row[10])) for row in rows]

    async def deliveries(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        limit: int = 200,
    ) -> list[Delivery]:
        """Deliveries filtered by status and channel, oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("channel", channel)):
            if value is not None:
                clauses.append(f"d.{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d {where} "
            "ORDER BY d.created_at, d.id LIMIT ?"
        )
        rows = await self._run(self._fetchall, sql, [*params, limit])
        return [_delivery(row) for row in rows]

    async def delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery by id, whatever its status."""
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = ?"
        rows = await self._run(self._fetchall, sql, [delivery_id])
        return _delivery(rows[0]) if rows else None

    async def mark_delivered(self, ids: Sequence[int], *, now: datetime) -> None:
        """Mark deliveries as delivered, counting the attempt."""
        await self._run(
            self._executemany_write,
            """
            UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,
                delivered_at = ?, last_error = NULL
            WHERE id = ?
            """,
            [(isoformat(now), delivery_id) for delivery_id in ids],
        )

    async def mark_failed(
        self,
        ids: Sequence[int],
        *,
        error: str,
        next_attempt_at: datetime | None,
        now: datetime,
    ) -> None:
        """Count a failed attempt; retry at ``next_attempt_at``, or dead when None.

        ``error`` must already be free of secrets (masked URLs only).
        """
        status = "pending" if next_attempt_at is not None else "dead"
        due = isoformat(next_attempt_at or now)
        await self._run(
            self._executemany_write,
            """
            UPDATE deliveries SET status = ?, attempts = attempts + 1,
                next_attempt_at = ?, last_error = ?
            WHERE id = ?
            """,
            [(status, due, error, delivery_id) for delivery_id in ids],
        )

    async def retry_delivery(self, delivery_id: int, *, now: datetime) -> bool:
        """Make a pending or dead delivery due now; False when there is none."""
        changed = await self._run(
            self._execute_write,
            """
            UPDATE deliveries SET status = 'pending', next_attempt_at = ?
            WHERE id = ? AND status IN ('pending', 'dead')
            """,
            [isoformat(now), delivery_id],
        )
        return changed > 0

    async def defer(self, ids: Sequence[int], *, until: datetime) -> int:
        """Move pending deliveries' next attempt to ``until`` without counting one.

        Digests, quiet hours and flood caps hold rows this way.
        :returns: how many deliveries were moved.
        """
        return await self._run(
            self._executemany_count,
            "UPDATE deliveries SET next_attempt_at = ? "
            "WHERE id = ? AND status = 'pending'",
            [(isoformat(until), delivery_id) for delivery_id in ids],
        )

    async def replay(
        self, since: datetime, *, channel: str | None = None, now: datetime
    ) -> int:
        """Queue again the delivered and dead deliveries of events since ``since``.

        Replays keep the original event ids, so consumers can dedupe.
        :returns: how many deliveries were queued.
        """
        sql = """
            UPDATE deliveries SET status = 'pending', next_attempt_at = ?,
                attempts = 0, delivered_at = NULL
            WHERE status IN ('delivered', 'dead')
              AND event_id IN (SELECT id FROM events WHERE occurred_at >= ?)
        """
        params: list[Any] = [isoformat(now), isoformat(since)]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        return await self._run(self._execute_write, sql, params)

    async def outbox_stats(
        self, now: datetime
    ) -> dict[str, tuple[int, int, float | None]]:
        """Per channel: pending and dead counts, and the oldest pending's age (s)."""
        rows = await self._run(
            self._fetchall,
            """
            SELECT channel,
                SUM(status = 'pending'), SUM(status = 'dead'),
                MIN(CASE WHEN status = 'pending' THEN created_at END)
            FROM deliveries GROUP BY channel ORDER BY channel
            """,
            [],
        )
        stats: dict[str, tuple[int, int, float | None]] = {}
        for channel, pending, dead, oldest in rows:
            age = (now - parse_isoformat(oldest)).total_seconds() if oldest else None
            stats[channel] = (pending, dead, age)
        return stats

    # Bookkeeping and retention

    async def get_meta(self, key: str) -> str | None:
        """A small piece of stored state (digest times, disabled channels)."""
        rows = await self._run(
            self._fetchall, "SELECT value FROM meta WHERE key = ?", [key]
        )
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str | None) -> None:
        """Store (or, with None, forget) a small piece of state."""
        if value is None:
            await self._run(
                self._execute_write, "DELETE FROM meta WHERE key = ?", [key]
            )
            return
        await self._run(
            self._execute_write,
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    async def prune(
        self, *, max_age: float | None, max_events: int | None, now: datetime
    ) -> int:
        """Forget old events: older than ``max_age`` seconds, or past the newest
        ``max_events`` of each watch. Events with pending deliveries stay.

        :returns: how many events were removed.
        """
        return await self._run(self._prune, max_age, max_events, now)

    def _prune(
        self, max_age: float | None, max_events: int | None, now: datetime
    ) -> int:
        keep_pending = (
            "AND id NOT IN (SELECT event_id FROM deliveries WHERE status = 'pending')"
        )
        removed = 0
        with self._write():
            if max_age is not None:
                cutoff = isoformat(now - timedelta(seconds=max_age))
                removed += self._db.conn.execute(
                    f"DELETE FROM events WHERE occurred_at < ? {keep_pending}", [cutoff]
                ).rowcount
            if max_events is not None:
                removed += self._db.conn.execute(
                    f"""
                    DELETE FROM events WHERE id IN (
                        SELECT id FROM (
                            SELECT id, ROW_NUMBER() OVER (
                                PARTITION BY watch ORDER BY occurred_at DESC, id DESC
                            ) AS position FROM events
                        ) WHERE position > ?
                    ) {keep_pending}
                    """,
                    [max_events],
                ).rowcount
            self._db.conn.execute(
                "DELETE FROM deliveries WHERE event_id NOT IN (SELECT id FROM events)"
            )
        if removed:
            log.info("prune events=%d", removed)
        return removed

    # Plumbing run on the store's thread

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def _execute_write(self, sql: str, params: Sequence[Any]) -> int:
        with self._write():
            return int(self._db.conn.execute(sql, params).rowcount)

    def _executemany_write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._write():
            self._db.conn.executemany(sql, rows)

    def _executemany_count(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self._write():
            return int(self._db.conn.executemany(sql, rows).rowcount)


def _connect(path: Path) -> Database:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db = Database(conn)
    migrations.apply(db)
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _watch_state(row: Sequence[Any]) -> WatchState:
    return WatchState(
        watch=row[0],
        project=row[1],
        name=row[2],
        generation=row[3],
        records=row[4],
        last_poll_at=parse_isoformat(row[5]) if row[5] else None,
        last_success_at=parse_isoformat(row[6]) if row[6] else None,
        consecutive_failures=row[7],
        last_error_kind=row[8],
        last_error=row[9],
        failing_alerted=bool(row[10]),
        held=row[11],
    )
