"""Content-addressed stores for results too large to sit in the ledger's own rows: files beside a SQLite ledger
(BlobStore), or a table of a PostgreSQL ledger written on a connection of its own (TableBlobs).

    blobs = BlobStore(Path("run/blobs"))
    digest = blobs.put(data)        # run/blobs/ab/abcdef... (sha256 of the bytes); the same bytes twice: one file
    data = blobs.get(digest)

A blob is stored whole before the ledger row that names it commits: a file is written to a temporary name and
renamed into place, so a crash leaves either the whole file or none (with `durable`, the file and its
directory are fsynced too: it survives power loss); a table row commits on its own. A blob whose row never
committed (a crash between the two, a result refused after it was written) is an orphan, and `sweep` removes
orphans. Both stores are written from the hub's offload thread, so the loop's transaction only names a digest:
the loop never waits while megabytes go to the disk or the database server.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from agents.database import PostgresDatabase, is_postgres


class _Pins:
    """Blobs of results written and not yet settled (committed or refused): never deleted. `put` runs on the hub's
    offload thread, `delete` on its loop."""

    table: str | None = None  # the database table holding the blobs (None: files beside the ledger)

    def __init__(self) -> None:
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()

    def unpin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]

    def close(self) -> None:
        pass


class BlobStore(_Pins):
    def __init__(self, directory: str | os.PathLike, *, durable: bool = False) -> None:
        super().__init__()
        self.directory, self.durable = Path(directory), durable

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"{digest[:80]!r} is not a blob digest")
        return self.directory / digest[:2] / digest

    def put(self, data: bytes | memoryview) -> str:
        """Store `data` (once: a blob already there is kept) and return its digest, pinned until `unpin`."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        with self._lock:
            self._pins[digest] += 1
            if path.exists() and path.stat().st_size == len(data):
                return digest
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.durable:
                fsync_dir(path.parent)
        except BaseException:  # a full disk, say: no result names it, so no pin may keep it
            self.unpin(digest)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        """The blob's bytes; FileNotFoundError (naming the file) when it is gone."""
        return self.path(digest).read_bytes()

    def delete(self, digest: str) -> bool:
        """Delete a blob, unless a result being recorded has it pinned. Whether it went."""
        with self._lock:
            if self._pins[digest] > 0:
                return False
            self.path(digest).unlink(missing_ok=True)
            return True

    def digests(self) -> Iterator[str]:
        if self.directory.exists():
            for path in self.directory.glob("??/*"):
                if not path.name.startswith("."):
                    yield path.name

    def sweep(self, referenced: Callable[[str], bool], older_than_s: float = 3600.0) -> int:
        """Remove blobs no ledger row names (`referenced(digest)` False) and left-over temporary files, once they
        are older than `older_than_s` (a blob just written may not be committed yet). Returns how many went."""
        removed, cutoff = 0, time.time() - older_than_s
        if not self.directory.exists():
            return 0
        for path in self.directory.glob("??/*"):
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if path.name.startswith(".") or not referenced(path.name):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class TableBlobs(_Pins):
    """The blobs of a PostgreSQL ledger, in its table `blobs`, on connections of their own, one per thread that
    uses them (each put commits by itself; the hub's loop keeps its connection for its transactions, and never
    waits behind a large put of the offload thread). Same methods as BlobStore."""

    table = "blobs"

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__()
        self.url, self.read_only = url, read_only
        self._local = threading.local()
        self._opened: list[PostgresDatabase] = []
        self._opened_lock = threading.Lock()  # not _lock: delete holds that while its thread may open a connection
        db = self._db()  # a wrong URL fails here, not at the first large result
        if not read_only and db.execute("SELECT to_regclass('blobs')").fetchone()[0] is None:
            db.execute("CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BYTEA NOT NULL,"
                       " created DOUBLE PRECISION NOT NULL)")
            # out of line, not compressed: the server would spend a core compressing what the ledger stores as sent
            db.execute("ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL")

    def _db(self) -> PostgresDatabase:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = PostgresDatabase(self.url, read_only=self.read_only)
            with self._opened_lock:
                self._opened.append(db)
        return db

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        cursor = self._db().execute(sql, args)
        return cursor.fetchall() if cursor.description else []

    def put(self, data: bytes | memoryview) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._pins[digest] += 1
        try:
            self._query("INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                        (digest, bytes(data), time.time()))
        except BaseException:  # the server is gone, say: no result names it, so no pin may keep it
            self.unpin(digest)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        rows = self._query("SELECT data FROM blobs WHERE digest = ?", (digest,))
        if not rows:
            raise FileNotFoundError(f"blob {digest} is not in the ledger's blobs table")
        return bytes(rows[0][0])

    def delete(self, digest: str) -> bool:
        with self._lock:  # held through the delete: a put of the same bytes pins first, or inserts after
            if self._pins[digest] > 0:
                return False
            self._query("DELETE FROM blobs WHERE digest = ?", (digest,))
        return True

    def digests(self) -> Iterator[str]:
        yield from (row[0] for row in self._query("SELECT digest FROM blobs"))

    def sweep(self, referenced: Callable[[str], bool], older_than_s: float = 3600.0) -> int:
        old = [row[0] for row in self._query("SELECT digest FROM blobs WHERE created <= ?", (time.time() - older_than_s,))]
        return sum(self.delete(digest) for digest in old if not referenced(digest))

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()


Blobs = BlobStore | TableBlobs


def open_blobs(ledger: str | os.PathLike, directory: str | os.PathLike | None = None, *, durable: bool = False,
               read_only: bool = False) -> Blobs:
    """The blob store of a ledger: files in `directory` (default: `blobs` beside a SQLite ledger), or the table of a
    postgresql:// one."""
    if is_postgres(ledger):
        return TableBlobs(str(ledger), read_only=read_only)
    return BlobStore(directory if directory is not None else Path(ledger).parent / "blobs", durable=durable)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
