"""Throwaway PostgreSQL clusters for the test suite.

The test session starts its own server, so ``python -m pytest`` works on any machine that has
the PostgreSQL server binaries installed; nothing has to be running beforehand.

    with pg_cluster() as pg:
        engine = sqlalchemy.create_engine(pg.url)       # postgresql+psycopg://oneprov:...@127.0.0.1:PORT/oneprov
        other_url = pg.create_database("test_upgrade")  # a fresh, empty database owned by the same role

What a cluster is:

* a fresh temporary directory ``<tmp>/oneprov-pg-XXXX/`` holding ``data/`` (the cluster),
  ``run/`` (the unix socket), ``server.log`` and ``owner`` (who started it);
* ``initdb`` with ``trust`` for unix-socket connections and ``scram-sha-256`` passwords for TCP
  on 127.0.0.1 (the server listens nowhere else), on a free port;
* the bootstrap superuser ``postgres`` (``.admin_url``) and an owner role ``oneprov`` (LOGIN,
  CREATEDB, CREATEROLE, not superuser) that owns the database ``oneprov`` (``.url``);
* durability switched off for speed (``fsync``, ``synchronous_commit``, ``full_page_writes``).

PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
system user through ``runuser -u postgres --`` and the temporary directory is chowned to it.

On exit (also on exceptions) the server is stopped (``pg_ctl stop -m immediate``; whatever is left
is killed with SIGKILL) and the directory is removed.  Clusters left behind by a test process that
was itself killed are reaped the next time a cluster is started in the same temporary directory.

Run ``python tests/pgserver.py`` to check that a cluster can be started on this machine.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = ["PgCluster", "pg_cluster", "find_bindir", "reap_stale_clusters"]

DIR_PREFIX = "oneprov-pg-"
SERVER_EXECUTABLES = ("initdb", "pg_ctl", "postgres")

# Appended to postgresql.conf.  The port is given on the pg_ctl command line (it may be retried).
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",  # the tests run 8+ concurrent processes, each with a pool
    "fsync": "off",  # a throwaway cluster never needs to survive a crash
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

PG_HBA = """\
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
"""

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looked for in order: $ONEPROV_PG_BINDIR, ``initdb`` on PATH, ``pg_config --bindir``,
    /usr/lib/postgresql/*/bin (Debian/Ubuntu, newest first), /usr/pgsql-*/bin (RHEL).
    """
    candidates: list[Path] = []
    if os.environ.get("ONEPROV_PG_BINDIR"):
        candidates.append(Path(os.environ["ONEPROV_PG_BINDIR"]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))

    def version(path: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", path)]

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        candidates += [Path(p) for p in sorted(glob.glob(pattern), key=version, reverse=True)]

    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in SERVER_EXECUTABLES):
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, through "
        "pg_config --bindir or in /usr/lib/postgresql/*/bin; install them (e.g. "
        "`apt-get install postgresql`) or set ONEPROV_PG_BINDIR. Searched: "
        + ", ".join(str(c) for c in candidates)
    )


class PgCluster:
    """A throwaway PostgreSQL cluster; use as a context manager (or call start() and stop())."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        user: str = "oneprov",
        dbname: str = "oneprov",
        admin_user: str = "postgres",
        base_dir: str | os.PathLike[str] | None = None,
        os_user: str = "postgres",
        settings: dict[str, str] | None = None,
    ) -> None:
        for name in (user, dbname, admin_user):
            _check_identifier(name)
        self.user = user
        self.password = secrets.token_hex(12)
        self.dbname = dbname
        self.admin_user = admin_user
        self.admin_password = secrets.token_hex(12)
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.os_user = os_user  # the user the server runs as when we are root
        self.base_dir = Path(base_dir or os.environ.get("ONEPROV_PG_TMPDIR") or tempfile.gettempdir()).absolute()
        self.port: int | None = None
        self.dir: Path | None = None  # the cluster's temporary directory, while it exists
        self.startup_seconds: float | None = None
        self.bindir: Path | None = None  # where initdb, pg_ctl and postgres were found
        self.postmaster_pid: int | None = None

    # --- where things are ------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir / "run"

    @property
    def log_path(self) -> Path:
        return self._dir / "server.log"

    @property
    def _dir(self) -> Path:
        if self.dir is None:
            raise RuntimeError("the PostgreSQL cluster is not running")
        return self.dir

    # --- URLs --------------------------------------------------------------------------------

    def url_for(self, dbname: str, *, user: str | None = None, password: str | None = None,
                driver: str = "postgresql+psycopg") -> str:
        """A URL for ``dbname`` over TCP, as the owner role unless ``user``/``password`` are given."""
        if self.port is None:
            raise RuntimeError("the PostgreSQL cluster is not running")
        user = user or self.user
        if password is None:
            password = self.admin_password if user == self.admin_user else self.password
        return f"{driver}://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the owner role's database: postgresql+psycopg://oneprov:PW@127.0.0.1:PORT/oneprov"""
        return self.url_for(self.dbname)

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the superuser on the ``postgres`` database."""
        return self.url_for("postgres", user=self.admin_user)

    @property
    def dsn(self) -> str:
        """libpq URI (for ``psycopg.connect``) of the owner role's database."""
        return self.url_for(self.dbname, driver="postgresql")

    # --- databases ---------------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database owned by the owner role and return its SQLAlchemy URL.

        ``name`` must be a plain lower-case identifier; without it a unique name is made up.
        Takes a few tens of milliseconds.
        """
        name = name or f"db_{secrets.token_hex(6)}"
        _check_identifier(name)
        with self.admin_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(self.user)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists, disconnecting whoever is still connected to it."""
        _check_identifier(name)
        with self.admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def admin_connection(self, dbname: str = "postgres") -> psycopg.Connection:
        """An autocommit psycopg connection as the superuser, through the unix socket (trust)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.admin_user,
                               dbname=dbname, autocommit=True, connect_timeout=10)

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PgCluster:
        if self.dir is not None:
            raise RuntimeError("the PostgreSQL cluster is already running")
        started = time.monotonic()
        try:
            self.bindir = find_bindir()
            self._make_dir()
            self._initdb()
            self._configure()
            self._start_server()
            self._create_roles()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the server and remove its directory.  Safe to call more than once."""
        if self.dir is None:
            return
        try:
            pid = self.postmaster_pid or _read_postmaster_pid(self.data_dir)
            if pid is not None and _process_alive(pid):
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    self._run("pg_ctl", "stop", "-D", self.data_dir, "-m", "immediate", "-w", "-t", "20",
                              check=False)
        finally:
            _kill_postmaster(self.data_dir, self.postmaster_pid)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
            self.port = None
            self.postmaster_pid = None

    # --- the steps of start() -------------------------------------------------------------------

    def _make_dir(self) -> None:
        reap_stale_clusters(self.base_dir)
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=self.base_dir))
        (self.dir / "owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
        self.socket_dir.mkdir()
        socket_path = self.socket_dir / ".s.PGSQL.65535"
        if len(str(socket_path)) > 103:  # sun_path holds 108 bytes on Linux, 104 on macOS
            raise RuntimeError(f"unix socket path {socket_path} is too long; set ONEPROV_PG_TMPDIR "
                               "to a shorter temporary directory")
        if os.geteuid() == 0:
            import pwd  # not on Windows

            entry = _getpwnam(pwd, self.os_user)
            for path in (self.dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            probe = self._run("test", "-w", self.dir, "-a", "-x", self.dir, check=False)
            if probe.returncode != 0:
                raise RuntimeError(f"user {self.os_user!r} cannot use {self.dir} (is one of its "
                                   "parents private?); set ONEPROV_PG_TMPDIR to a directory such as /tmp")

    def _initdb(self) -> None:
        self._run("initdb", "-D", self.data_dir, "-U", self.admin_user, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")

    def _configure(self) -> None:
        # Written as root these files keep their owner (the postgres user): we only rewrite them.
        settings = {**self.settings, "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# oneprov test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA)

    def _start_server(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            port = _free_port()
            result = self._run("pg_ctl", "start", "-D", self.data_dir, "-l", self.log_path,
                               "-o", f"-p {port}", "-w", "-t", "60", check=False)
            pid = _read_postmaster_pid(self.data_dir)
            if result.returncode == 0 and pid is not None:
                self.port, self.postmaster_pid = port, pid
                return
            _kill_postmaster(self.data_dir, pid)
            log = self._log_tail()
            if "could not bind" in log and attempt < attempts:
                continue  # somebody took the port between _free_port() and the server's bind()
            raise RuntimeError(
                f"PostgreSQL server failed to start (pg_ctl exit status {result.returncode}).\n"
                f"pg_ctl output:\n{result.stdout}{result.stderr}\n"
                f"last lines of {self.log_path}:\n{log}"
            )

    def _create_roles(self) -> None:
        with self.admin_connection() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(self.admin_user), sql.Literal(self.admin_password)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                sql.Identifier(self.user), sql.Literal(self.password)))
        self.create_database(self.dbname)

    # --- helpers -----------------------------------------------------------------------------

    def _run(self, program: str, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server program (as the postgres user when we are root), output captured."""
        exe = str(self.bindir / program) if program in SERVER_EXECUTABLES else program
        cmd = [exe, *map(str, args)]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        # PG* variables (PGPORT, PGDATA, ...) of the caller must not leak into the cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        result = subprocess.run(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit status {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"


@contextlib.contextmanager
def pg_cluster(**kwargs: object) -> Iterator[PgCluster]:
    """Start a throwaway cluster (keyword arguments as for PgCluster), yield it, then remove it."""
    with PgCluster(**kwargs) as cluster:  # type: ignore[arg-type]
        yield cluster


def reap_stale_clusters(base_dir: str | os.PathLike[str] | None = None) -> None:
    """Kill and remove clusters whose test process died without stopping them (e.g. kill -9)."""
    base = Path(base_dir or os.environ.get("ONEPROV_PG_TMPDIR") or tempfile.gettempdir())
    for directory in base.glob(DIR_PREFIX + "*"):
        try:
            host, pid = (directory / "owner").read_text().split()
            owner_alive = host != socket.gethostname() or _process_alive(int(pid))
        except (OSError, ValueError):
            continue  # not one of ours, or still being set up
        if not owner_alive:
            data_dir = directory / "data"
            _kill_postmaster(data_dir, _read_postmaster_pid(data_dir))
            shutil.rmtree(directory, ignore_errors=True)


# --- process helpers ---------------------------------------------------------------------------

def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")


def _getpwnam(pwd, name: str):  # type: ignore[no-untyped-def]
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"PostgreSQL refuses to run as root and there is no {name!r} system user "
                           f"to run it as; create one (e.g. `useradd --system {name}`)") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed postmaster may never be reaped in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: is ``pid`` a postgres process started on ``data_dir``?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postgres" in cmdline and str(data_dir).encode() in cmdline


def _kill_postmaster(data_dir: Path, pid: int | None) -> None:
    """SIGKILL a postmaster and its children (each child runs in its own session)."""
    if pid is None or not _process_alive(pid) or not _is_postmaster_of(pid, data_dir):
        return
    for victim in [pid, *_children(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


if __name__ == "__main__":
    with pg_cluster() as pg:
        print(f"started in {pg.startup_seconds:.2f} s ({pg.bindir})")
        print(f"url:       {pg.url}")
        print(f"admin_url: {pg.admin_url}")
        with psycopg.connect(pg.dsn) as conn:
            print(conn.execute("SELECT version()").fetchone()[0])
        t = time.monotonic()
        pg.create_database("pgserver_selftest")
        print(f"create_database took {time.monotonic() - t:.3f} s")
    print("stopped and removed")
