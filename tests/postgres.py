"""A real PostgreSQL server for tests: initdb + pg_ctl on a free 127.0.0.1 port.

The cluster lives in a private temporary folder (data and a private socket directory) owned by
the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root), and is
removed when the server is stopped for good.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder; FileNotFoundError says how to install it."""
    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "run `make system-packages` (apt-get install postgresql)"
        )
    return found[-1].parent


def _reserved_port() -> socket.socket:
    """A socket bound to a free loopback port, never listening, kept for the cluster's life.

    PostgreSQL binds with SO_REUSEADDR, as this socket does, so it can listen there; nothing else
    can take the port meanwhile, not while the server starts nor while a test has stopped it
    (another process's bind(0) or outgoing connection is never given it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class PostgresServer:
    """One running cluster: ``url(db)`` for clients, ``stop()``/``start()`` to interrupt it."""

    base: Path
    port: int
    bin_dir: Path
    reservation: socket.socket | None = None  # holds ``port`` (see _reserved_port)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if completed.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{argv[0]} failed ({completed.returncode}): {completed.stderr.strip()}\n{tail}"
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        """The server's first process; the backends are its children."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server (if running) and remove every file of the cluster."""
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            if self.reservation is not None:
                self.reservation.close()


def start_postgres() -> PostgresServer:
    """initdb a fresh cluster in a private folder and start it on a free loopback port."""
    bin_dir = postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
    (base / "socket").mkdir(mode=0o700)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (base, base / "socket"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    reservation = _reserved_port()
    server = PostgresServer(base, reservation.getsockname()[1], bin_dir, reservation)
    try:
        server._run(
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server
