"""The two databases a ledger can live in, behind one small interface: SQLite (a file beside the run, the
default) and PostgreSQL (a server, where one machine's disk is not enough; the `postgres` extra, psycopg 3).

    db = open_database("runs/a/ledger.sqlite")                  # or "postgresql://user@host/selfplay"
    with db.transaction():
        db.execute("UPDATE tasks SET state = ? WHERE task_id = ?", ("queued", task_id))
    rows = db.execute("SELECT ...", args).fetchall()

The ledger's SQL is written once: `?` placeholders, standard upserts (ON CONFLICT), partial indexes, and the
column types BLOB, REAL, INTEGER, which PostgreSQL reads as BYTEA, DOUBLE PRECISION and BIGINT. What differs
is here: how a connection is opened and checked, what a transaction takes (SQLite's one write lock; row
locks on PostgreSQL, where `for_update` is added to the reads a lease or a result is decided on), how large
the database is. Results too large for a row go to a blob store (agents/blobs.py): files beside a SQLite
ledger, a table of a PostgreSQL one.
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class DatabaseError(RuntimeError):
    """The database cannot be used as a ledger (cannot be opened, damaged); one line says why."""


def is_postgres(where: str | os.PathLike) -> bool:
    return str(where).startswith(POSTGRES_PREFIXES)


def open_database(where: str | os.PathLike, *, durable: bool = False, check: bool = True,
                  read_only: bool = False) -> SqliteDatabase | PostgresDatabase:
    """A SQLite file path, or a postgresql:// URL."""
    if is_postgres(where):
        return PostgresDatabase(str(where), read_only=read_only)
    return SqliteDatabase(Path(where), durable=durable, check=check, read_only=read_only)


class SqliteDatabase:
    """One connection in WAL mode; a write transaction takes SQLite's write lock at BEGIN (IMMEDIATE)."""

    kind = "sqlite"
    inline_bytes: int | None = 64 << 10  # larger results go to blob files beside the ledger
    for_update = skip_locked = ""  # the write lock is the whole database's, taken at BEGIN
    IntegrityError = sqlite3.IntegrityError
    DataError = sqlite3.DataError

    def __init__(self, path: Path, *, durable: bool = False, check: bool = True, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            if not path.exists():  # mode=ro would fail too, but with "unable to open database file"
                raise FileNotFoundError(f"{path}: no ledger here")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # One owner at a time (the hub opens it in start() and hands it to its loop thread), so the same-thread
        # check would only forbid that hand-over; transactions are explicit (isolation_level=None).
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            if self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:  # a new file, before WAL:
                self.conn.execute("PRAGMA page_size=8192")  # a 10 KiB result packs in 1.07x its size (4 KiB: 1.21x)
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # pages freed by retention can go back to disk
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: the indexes' upper levels in memory
            self.conn.execute("PRAGMA wal_autocheckpoint=512")  # checkpoint every 4 MiB of WAL (8 KiB pages)
            self.conn.execute("PRAGMA journal_size_limit=4194304")  # and the WAL file shrinks back to 4 MiB after it
            if check:
                problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise DatabaseError(f"{path} is damaged (SQLite quick_check: {'; '.join(problems)[:300]}); "
                                        "restore it from a copy, or start a new run in another directory")
        except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed", ...
            self.conn.close()
            raise DatabaseError(f"{path} is damaged and cannot be used as a ledger ({e}); restore it from a "
                                "copy, or start a new run in another directory") from None
        except DatabaseError:
            self.conn.close()
            raise

    def execute(self, sql: str, args: tuple | list = ()) -> Any:
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        """One statement for many rows (an insert or update without results)."""
        if rows:
            self.conn.executemany(sql, rows)

    def transaction(self) -> AbstractContextManager:
        return _SqliteTransaction(self.conn)

    def ddl(self, schema: str) -> list[str]:
        return [s for s in schema.split(";") if s.strip()]

    def size_bytes(self) -> int:
        """The pages in use (freed pages that SQLite reuses are not counted: a file without incremental vacuum does
        not shrink) and the WAL."""
        page_size, pages, free = (self.conn.execute(f"PRAGMA {name}").fetchone()[0]
                                  for name in ("page_size", "page_count", "freelist_count"))
        wal = self.path.with_name(self.path.name + "-wal")
        return page_size * (pages - free) + (wal.stat().st_size if wal.exists() else 0)

    def compact(self) -> None:
        """Give up to 8 MiB of freed pages back to the disk (a file created with auto_vacuum=INCREMENTAL)."""
        self.conn.execute("PRAGMA incremental_vacuum(2048)").fetchall()

    def close(self) -> None:
        self.conn.close()


class _SqliteTransaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer, nothing half-applied."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type:
            if self.conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                self.conn.execute("ROLLBACK")
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:  # a full disk, say: SQLite may leave the transaction open, and then every later
            if self.conn.in_transaction:  # BEGIN would fail too
                self.conn.execute("ROLLBACK")
            raise


_PLACEHOLDER = re.compile(r"\?")
_TYPES = {"BLOB": "BYTEA", "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_TYPE_WORDS = re.compile(r"\b(BLOB|REAL|INTEGER)\b")


class PostgresDatabase:
    """One psycopg 3 connection; transactions at READ COMMITTED with the rows a decision reads locked (FOR UPDATE)."""

    kind = "postgresql"
    inline_bytes: int | None = 64 << 10  # larger results go to the table `blobs`, written off the hub's loop
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"  # a lease takes queued rows no other transaction is taking

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        try:
            import psycopg
        except ImportError:
            raise DatabaseError("a postgresql:// ledger needs psycopg 3: pip install 'selfplay[postgres]'") from None
        self.IntegrityError = psycopg.errors.IntegrityError
        self.DataError = psycopg.DataError
        self.url, self.url_shown = url, _redacted(url)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            raise DatabaseError(f"cannot connect to the ledger at {_redacted(url)}: {str(e).strip()[:300]}") from None
        if read_only:
            self.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        self._sql: dict[str, str] = {}

    def _converted(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            converted = self._sql[sql] = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
        return converted

    def execute(self, sql: str, args: tuple | list = ()) -> Any:
        return self.conn.execute(self._converted(sql), args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        """One statement for many rows, pipelined: one round trip to the server, not one per row."""
        if rows:
            with self.conn.cursor() as cursor:
                cursor.executemany(self._converted(sql), rows)

    def transaction(self) -> AbstractContextManager:
        return self.conn.transaction()

    def ddl(self, schema: str) -> list[str]:
        return [_TYPE_WORDS.sub(lambda m: _TYPES[m.group(1)], s) for s in schema.split(";") if s.strip()]

    def size_bytes(self, without: str | None = None) -> int:
        """The ledger's tables with their indexes and out-of-line values, on the server (space that autovacuum
        freed for new rows included: it does not shrink), all but the table `without`."""
        return int(self.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " AND c.relname <> ?", (without or "",)).fetchone()[0])

    def compact(self) -> None:
        """Nothing to do: the server's autovacuum reuses the space of deleted rows."""

    def try_lock(self, key: int) -> bool:
        """A session-wide advisory lock: one hub writes a ledger at a time."""
        return bool(self.conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def _redacted(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


Database = SqliteDatabase | PostgresDatabase
