"""Throwaway servers for a search team: a local PostgreSQL cluster and an MLflow tracking server on it.

Used by the tests, ``benchmarks/search.py`` and ``make mlflow-server``; in production point
``search.storage`` and ``tracking.uri`` at the team's own PostgreSQL and MLflow server instead.

PostgreSQL refuses to run as root: as root, the cluster is initialised and run as the ``postgres`` OS
user (created by the Debian package) through ``runuser``; its directory is handed to that user.

Command line::

    python -m slimkit.plugins.search.servers postgres --dir .slimkit/pg --port 5433
    python -m slimkit.plugins.search.servers mlflow --db postgresql://slimkit@127.0.0.1:5433/mlflow --port 5000
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slimkit.core import ConfigError

#: The database user the throwaway cluster trusts (no password, loopback only).
PG_USER = "slimkit"


def pg_bin() -> Path | None:
    """The directory of ``pg_ctl``/``initdb`` (PATH, then Debian's /usr/lib/postgresql/*/bin), or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "pg_ctl").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; raise if ``proc`` exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    bin_dir: Path

    def _cmd(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` (SQLAlchemy's default PostgreSQL driver, psycopg 3)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> Postgres:
        """``initdb`` (first time) and ``pg_ctl start``; returns self once it accepts connections."""
        self.data_dir = Path(self.data_dir).resolve()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.data_dir, "postgres", "postgres")
                for parent in self.data_dir.parents:  # postgres must reach its directory
                    if parent == Path("/"):
                        break
                    mode = parent.stat().st_mode
                    if not mode & 0o001:
                        os.chmod(parent, mode | 0o001)
            subprocess.run(
                self._cmd(
                    str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "-A", "trust", "-E", "UTF8"
                ),
                check=True,
                capture_output=True,
            )
        log = self.data_dir / "server.log"
        try:  # already running (make mlflow-server again): nothing to do
            wait_port(self.port, 0.5)
            return self
        except TimeoutError:
            pass
        subprocess.run(
            self._cmd(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c max_connections=200 -c fsync=off",
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ),
            check=True,
            capture_output=True,
        )
        wait_port(self.port, timeout)
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing); return its URL."""
        import psycopg

        conn = psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", connect_timeout=5, autocommit=True
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``."""
        subprocess.run(
            self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"),
            capture_output=True,
        )


def start_postgres(data_dir: Path, port: int | None = None) -> Postgres:
    """Start a throwaway PostgreSQL cluster in ``data_dir``; :class:`ConfigError` if it is not installed."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise ConfigError(
            "PostgreSQL is not installed (no pg_ctl/initdb); install it (apt-get install -y postgresql) "
            "or use search.storage=sqlite:///study.db"
        )
    return Postgres(Path(data_dir), port or free_port(), bin_dir).start()


def mlflow_server_command(db_url: str, artifacts: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow server`` command line for a PostgreSQL backend store and a local artifact store."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow) if mlflow.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        db_url,
        "--artifacts-destination",
        str(Path(artifacts).resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_mlflow(db_url: str, artifacts: Path, port: int | None = None, log: Path | None = None) -> tuple:
    """Start ``mlflow server`` in the background; return ``(process, url)`` once it answers."""
    port = port or free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        mlflow_server_command(db_url, artifacts, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 90.0, proc)
        _wait_health(url, 60.0, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def _wait_health(url: str, timeout: float, proc: subprocess.Popen) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {url} did not answer /health after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc`` and its process group (it was started in a new session)."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def main(argv: list[str] | None = None) -> int:
    """``python -m slimkit.plugins.search.servers postgres|mlflow ...`` (foreground until Ctrl-C for mlflow)."""
    parser = argparse.ArgumentParser(prog="python -m slimkit.plugins.search.servers")
    sub = parser.add_subparsers(dest="what", required=True)
    pg = sub.add_parser("postgres", help="start a local PostgreSQL cluster (background) and print its URL")
    pg.add_argument("--dir", default=".slimkit/postgres")
    pg.add_argument("--port", type=int, default=5433)
    pg.add_argument("--database", default="mlflow")
    pg.add_argument("--stop", action="store_true")
    ml = sub.add_parser("mlflow", help="run mlflow server on a PostgreSQL database (foreground)")
    ml.add_argument("--db", required=True)
    ml.add_argument("--artifacts", default="mlartifacts")
    ml.add_argument("--host", default="127.0.0.1")
    ml.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.what == "postgres":
        bin_dir = pg_bin()
        if bin_dir is None:
            print("slimkit: error: PostgreSQL is not installed; apt-get install -y postgresql", file=sys.stderr)
            return 2
        server = Postgres(Path(args.dir), args.port, bin_dir)
        if args.stop:
            server.data_dir = Path(args.dir).resolve()
            server.stop()
            return 0
        server.start()
        for db in (args.database, "optuna"):
            print(server.create_database(db))
        return 0
    os.execvp(*(lambda c: (c[0], c))(mlflow_server_command(args.db, Path(args.artifacts), args.port, args.host)))
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
