"""Content-addressed files beside the ledger, for results too large to sit in a database row.

    blobs = BlobStore(Path("run/blobs"))
    digest = blobs.put(data)        # run/blobs/ab/abcdef... (sha256 of the bytes); the same bytes twice: one file
    data = blobs.get(digest)

A blob is written to a temporary name and renamed into place, so a crash leaves either the whole file or none
(with `durable`, the file and its directory are fsynced too: it survives power loss). The ledger row that
names a blob is committed after the blob is written; a blob whose row never committed (a crash between the
two, a result refused after it was written) is an orphan, and `sweep` removes orphans.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path


class BlobStore:
    def __init__(self, directory: str | os.PathLike, *, durable: bool = False) -> None:
        self.directory, self.durable = Path(directory), durable
        self._pins: Counter[str] = Counter()  # blobs of results written and not yet settled: never deleted
        self._lock = threading.Lock()  # put runs on the hub's offload thread, delete on its loop

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
        return digest

    def get(self, digest: str) -> bytes:
        """The blob's bytes; FileNotFoundError (naming the file) when it is gone."""
        return self.path(digest).read_bytes()

    def unpin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]

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

    def size(self) -> int:
        """Bytes held in blobs."""
        if not self.directory.exists():
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("??/*") if p.is_file())


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
