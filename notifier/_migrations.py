"""The tables of the SQLite store and the migrations that create them.

Each migration runs once per file, in order, recorded by sqlite-utils in
``_sqlite_migrations``; a new table or column is a new migration, never an
edit of an applied one.

``watches`` holds each watch's generation, fingerprint and health;
``snapshot_records`` one row per record of the last complete snapshot (with
``misses`` for records held while their absence is unconfirmed); ``events``
the event JSON of every change; ``deliveries`` one row per event and
channel target (the outbox); ``meta`` small delivery bookkeeping.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("atleta-notifier")


@migrations(transactional=False)
def m001_wal(db: Database) -> None:
    """Readers (``status``, ``history``) never wait for the daemon's writes."""
    db.enable_wal()


@migrations()
def m002_tables(db: Database) -> None:
    """The first schema."""
    db.execute(
        """
        CREATE TABLE watches (
            id TEXT PRIMARY KEY,
            project TEXT NOT NULL,
            name TEXT NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0,
            fingerprint TEXT,
            records INTEGER NOT NULL DEFAULT 0,
            last_poll_at TEXT,
            last_success_at TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            last_error_kind TEXT,
            last_error TEXT,
            failing_alerted INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute(
        """
        CREATE TABLE snapshot_records (
            watch TEXT NOT NULL,
            key TEXT NOT NULL,
            hash TEXT NOT NULL,
            record TEXT NOT NULL,
            misses INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (watch, key)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            watch TEXT NOT NULL,
            project TEXT NOT NULL,
            type TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            key TEXT,
            body TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX events_by_time ON events (occurred_at)")
    db.execute("CREATE INDEX events_by_watch ON events (watch, occurred_at)")
    db.execute(
        """
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL REFERENCES events (id),
            channel TEXT NOT NULL,
            target INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_error TEXT,
            delivered_at TEXT,
            UNIQUE (event_id, channel, target)
        )
        """
    )
    db.execute("CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m003_missing_index(db: Database) -> None:
    """Clearing held-missing marks must not scan a 100,000-record watch."""
    db.execute(
        "CREATE INDEX snapshot_records_missing ON snapshot_records (watch) "
        "WHERE misses > 0"
    )
