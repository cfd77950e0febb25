"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary directory, listening on a unix
socket there only (no TCP), trust authentication, stopped and removed on close.

    with PgServer() as server:                   # PgServer.find() is None where no server binaries are installed
        url = server.new_database()              # postgresql://postgres@/t_0123abcd?host=/tmp/...&port=...

It uses the server binaries of Debian's `postgresql` package (`make install-dev` installs it where apt can) or any
`initdb`/`postgres` on PATH. PostgreSQL refuses to run as root, so under root (as in CI) the server runs as
`nobody`.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

NOBODY = 65534


class PgServer:
    def __init__(self) -> None:
        bindir = self.find()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (initdb, postgres): apt install postgresql")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="selfplay-pg-"))
        self.port = random.randrange(20000, 60000)
        as_nobody = os.geteuid() == 0
        if as_nobody:
            os.chown(self.dir, NOBODY, NOBODY)
        self._preexec = _become_nobody if as_nobody else None
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        with open(self.dir / "server.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-k", str(self.dir), "-p", str(self.port), "-c",
                 "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=self._preexec)
        self._wait_ready()

    @staticmethod
    def find() -> Path | None:
        """The directory of initdb and postgres, or None."""
        on_path = shutil.which("initdb")
        candidates = [Path(on_path).resolve().parent] if on_path else []
        candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
        return next((c for c in candidates if (c / "initdb").exists() and (c / "postgres").exists()), None)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bindir / tool), *args], check=True, capture_output=True, preexec_fn=self._preexec)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}&port={self.port}"

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                    self.close()
                    raise RuntimeError(f"PostgreSQL did not start: {log}") from None
                time.sleep(0.1)

    def new_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of the database named `template`; its URL."""
        name = f"t_{os.urandom(4).hex()}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.url(name)

    def close(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: open clients are disconnected
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _become_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
