"""The team's MLflow tracking server (``make mlflow-server``) and an optional local PostgreSQL cluster.

In production point ``search.storage`` and ``tracking.uri`` at the team's own PostgreSQL and MLflow
server; this module starts one for a try-out or a small team, safely:

- ``mlflow server`` gets its database URL from the environment (``MLFLOW_BACKEND_STORE_URI``), never
  on its command line (every local user can read that with ``ps``); what is printed masks the password.
- It serves with MLflow's basic-auth app (``--app-name basic-auth``) whenever the host is not a
  loopback address, and refuses to serve such a host without it. The admin user is created on the
  first start from ``MLFLOW_AUTH_ADMIN_PASSWORD`` (``MLFLOW_AUTH_ADMIN_USERNAME``, default ``admin``);
  clients log in with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
- The local PostgreSQL cluster authenticates with ``scram-sha-256`` over TCP (peer on its Unix socket,
  which sits inside the cluster's 0700 folder); the databases belong to the role ``slimkit``
  (no superuser), whose generated password is kept in a 0600 ``.pgpass`` file beside the cluster's
  folder. PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` OS user
  through ``runuser``, which must be able to reach the folder (no parent folder's permissions are changed).

The test suite starts these servers from its fixtures (``tests/plugins/search/``).

Command line::

    python -m slimkit.plugins.search.servers postgres --dir .slimkit/postgres --port 5433
    MLFLOW_BACKEND_STORE_URI=postgresql://... python -m slimkit.plugins.search.servers mlflow --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.core import ConfigError, SlimkitError

#: The database role that owns the local cluster's databases (LOGIN, CREATEDB, not a superuser).
PG_USER = "slimkit"

#: The environment variables of ``mlflow server`` and its basic-auth app that this module reads or sets.
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"

#: ``--auth``: ``auto`` serves with authentication exactly when the host is not loopback.
AUTH_MODES = ("auto", "on", "off")
#: MLflow's permissions, for ``default_permission`` (what a logged-in user may do with others' runs).
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
#: MLflow refuses shorter admin passwords.
MIN_PASSWORD_LENGTH = 12

_TEAM_EXTRA = "pip install 'slimkit[team]'"


def mask_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    return re.sub(r"(://[^:/@\s]*):[^@/\s]*@", r"\1:***@", str(url))


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), atomically; return ``path``.

    A missing folder is created with mode 0700; existing folders keep their permissions.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, host: str = "127.0.0.1") -> None:
    """Wait until ``host``:``port`` accepts connections; raise if ``proc`` exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def pgpass_lines(port: int, password: str, user: str = PG_USER) -> str:
    """A libpq password file (``PGPASSFILE``, ``~/.pgpass`` format) for ``user`` on 127.0.0.1:``port``."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", password):  # nothing to escape (':' and '\\' would need it)
        raise ValueError("the generated password has characters a .pgpass line would need to escape")
    return "".join(f"{host}:{port}:*:{user}:{password}\n" for host in ("127.0.0.1", "localhost"))


def role_sql(password: str, user: str = PG_USER) -> str:
    """The statement that creates the role owning the databases: it logs in and creates databases, nothing more."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", password):  # safe inside '...'
        raise ValueError("the generated password has characters an SQL string literal would need to escape")
    return (
        f"CREATE ROLE {user} LOGIN NOSUPERUSER NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS PASSWORD '{password}';\n"
    )


def _run_quiet(cmd: list[str], what: str, input: str | None = None, secret: str | None = None) -> None:
    """Run ``cmd``; raise a one-line RuntimeError with its ERROR/FATAL lines (``secret`` masked) on failure."""
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    lines = (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines()
    errors = [ln for ln in lines if re.search(r"\b(ERROR|FATAL|PANIC):", ln)]
    if proc.returncode != 0 or errors:
        # single-user mode echoes a failed statement (the password in it) as "STATEMENT: ...": left out
        detail = " ".join(errors) or " ".join(ln for ln in lines if "STATEMENT" not in ln)[-400:]
        if secret:
            detail = detail.replace(secret, "***")
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {detail.strip()}")


@dataclass
class Postgres:
    """A local PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``.

    Passwords are checked (``scram-sha-256``) on TCP; the Unix socket (inside ``data_dir``, mode 0700)
    uses peer authentication. The databases belong to :data:`PG_USER`, whose generated password is in
    :attr:`password_file` (0600). ``fsync=False`` is for throwaway test clusters only.
    """

    data_dir: Path
    port: int
    bin_dir: Path
    fsync: bool = True
    _password: str | None = field(default=None, repr=False)

    def _cmd(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    @property
    def password_file(self) -> Path:
        """``<data_dir>.pgpass``: the password of :data:`PG_USER` as a libpq password file (``PGPASSFILE``)."""
        data_dir = Path(self.data_dir).absolute()
        return data_dir.with_name(data_dir.name + ".pgpass")

    def password(self) -> str:
        """The password of :data:`PG_USER`, read from :attr:`password_file`."""
        if self._password is None:
            line = self.password_file.read_text().splitlines()[0]
            self._password = line.rsplit(":", 1)[1]
        return self._password

    def url(self, database: str = "postgres", password: bool = True) -> str:
        """SQLAlchemy URL of ``database`` (default driver: psycopg 3), with the password unless ``password=False``
        (then libpq finds it through ``PGPASSFILE``=:attr:`password_file`). Do not print the full URL."""
        auth = f"{PG_USER}:{self.password()}" if password else PG_USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def initdb_command(self) -> list[str]:
        """``initdb``: scram-sha-256 on TCP, peer on the Unix socket (never ``trust``)."""
        return self._cmd(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        )

    def single_user_command(self) -> list[str]:
        """``postgres --single``: runs the role's SQL (on stdin) before the server ever listens."""
        return self._cmd(
            str(self.bin_dir / "postgres"),
            "--single",
            "-D",
            str(self.data_dir),
            "-c",
            "password_encryption=scram-sha-256",
            "postgres",
        )

    def start_command(self, timeout: float = 30.0) -> list[str]:
        """``pg_ctl start``: loopback only, the socket inside ``data_dir``; ``fsync=off`` only when asked."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c max_connections=200 "
            "-c password_encryption=scram-sha-256"
        )
        if not self.fsync:
            options += " -c fsync=off"
        log = Path(self.data_dir) / "server.log"
        return self._cmd(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-o", options, "-w", "-t",
            str(int(timeout)), "start",
        )  # fmt: skip

    def _prepare_data_dir(self) -> None:
        """Create ``data_dir`` (mode 0700); as root hand it to the ``postgres`` OS user, which must reach it."""
        created = [d for d in (self.data_dir, *self.data_dir.parents) if not d.exists()]  # deepest first
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        shutil.chown(self.data_dir, "postgres", "postgres")
        reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.data_dir)])
        if reach.returncode != 0:
            for d in created:  # leave no trace
                d.rmdir()
            raise ConfigError(
                f"the postgres OS user cannot reach {self.data_dir} (a parent folder is closed to other users); "
                "put the cluster in a folder it can reach, e.g. --dir /var/tmp/slimkit-postgres, "
                "or run as a non-root user"
            )

    def _init(self) -> None:
        """``initdb``, then create :data:`PG_USER` with a generated password and write :attr:`password_file`."""
        self._prepare_data_dir()
        _run_quiet(self.initdb_command(), "initdb")
        password = secrets.token_urlsafe(24)
        _run_quiet(
            self.single_user_command(), f"creating the role {PG_USER}", input=role_sql(password), secret=password
        )
        self._password = password
        write_private(self.password_file, pgpass_lines(self.port, password))

    def start(self, timeout: float = 30.0) -> Postgres:
        """``initdb`` (first time) and ``pg_ctl start``; returns self once it accepts connections."""
        self.data_dir = Path(self.data_dir).resolve()
        if not (self.data_dir / "PG_VERSION").exists():
            self._init()
        elif not self.password_file.exists():
            raise ConfigError(
                f"{self.data_dir} holds a PostgreSQL cluster without slimkit's password file {self.password_file} "
                "(older slimkit versions let every local user in as superuser); stop it "
                f"(pg_ctl -D {self.data_dir} stop -m fast), delete the folder and start again, or use another --dir"
            )
        else:  # the port may differ from the last start
            write_private(self.password_file, pgpass_lines(self.port, self.password()))
        try:  # already running (make mlflow-server again): nothing to do
            wait_port(self.port, 0.5)
            return self
        except TimeoutError:
            pass
        _run_quiet(self.start_command(timeout), "pg_ctl start")
        wait_port(self.port, timeout)
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by :data:`PG_USER` (if missing); return its URL (with the password)."""
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(f"the PostgreSQL driver psycopg is not installed; {_TEAM_EXTRA}") from exc

        conn = psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_USER,
            password=self.password(),
            dbname="postgres",
            connect_timeout=5,
            autocommit=True,
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


def start_postgres(data_dir: Path, port: int | None = None, fsync: bool = True) -> Postgres:
    """Start a local PostgreSQL cluster in ``data_dir``; :class:`ConfigError` if it is not installed.

    ``fsync=False`` trades crash safety for speed: for throwaway test clusters only.
    """
    bin_dir = pg_bin()
    if bin_dir is None:
        raise ConfigError(
            "PostgreSQL is not installed (no pg_ctl/initdb); install it (apt-get install -y postgresql) "
            "or use search.storage=sqlite:///study.db"
        )
    return Postgres(Path(data_dir), port or free_port(), bin_dir, fsync=fsync).start()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: ``localhost``, 127.0.0.0/8 or ``::1``."""
    name = str(host).strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_auth(host: str, mode: str = "auto") -> bool:
    """Whether to serve with MLflow's basic-auth app: ``on``, or ``auto`` on a host that is not loopback.

    Raises :class:`ConfigError` for ``off`` on such a host (``0.0.0.0``, a LAN address, a host name):
    anyone who reaches the port could read and overwrite every run and model.
    """
    if mode not in AUTH_MODES:
        raise ConfigError(f"auth={mode!r} is not one of {', '.join(AUTH_MODES)}")
    exposed = not is_loopback(host)
    if mode == "off" and exposed:
        raise ConfigError(
            f"refusing to serve MLflow on {host} without authentication: anyone who reaches the port could read "
            f"and overwrite runs and models; serve it with authentication (MLflow's basic-auth app, admin password "
            f"from {ADMIN_PASSWORD_ENV}) or on 127.0.0.1"
        )
    return mode == "on" or (mode == "auto" and exposed)


def auth_environment(
    auth_dir: Path, environ: Mapping[str, str] | None = None, default_permission: str = "EDIT"
) -> dict[str, str]:
    """The variables ``mlflow server --app-name basic-auth`` needs, its files written to ``auth_dir``.

    - ``MLFLOW_AUTH_CONFIG_PATH``: ``auth_dir/basic_auth.ini`` (0600), whose user store is the SQLite
      file ``auth_dir/basic_auth.db``, and ``default_permission`` what every logged-in user may do with
      the others' experiments (``EDIT``: log runs into them, not delete them). A config path already in
      ``environ`` is the team's own and is used as it is.
    - ``MLFLOW_FLASK_SERVER_SECRET_KEY``: kept from ``environ``, else generated once into ``auth_dir/secret_key``.

    The first start (no user store yet) needs ``MLFLOW_AUTH_ADMIN_PASSWORD`` (12+ characters) in
    ``environ``: MLflow creates the admin user (``MLFLOW_AUTH_ADMIN_USERNAME``, default ``admin``) from it.
    """
    env = dict(os.environ if environ is None else environ)
    if default_permission not in PERMISSIONS:
        raise ConfigError(f"default_permission={default_permission!r} is not one of {', '.join(PERMISSIONS)}")
    auth_dir = Path(auth_dir).absolute()
    user_db = auth_dir / "basic_auth.db"
    username = env.get(ADMIN_USERNAME_ENV) or "admin"
    own_config = bool(env.get(AUTH_CONFIG_ENV))  # the team's own config file: used as it is
    if not own_config and not user_db.exists():
        password = env.get(ADMIN_PASSWORD_ENV) or ""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ConfigError(
                f"the first start of the MLflow server with authentication creates its admin user {username!r}: "
                f"set {ADMIN_PASSWORD_ENV} in the environment to a password of {MIN_PASSWORD_LENGTH} characters "
                f"or more (clients log in with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            )
    out: dict[str, str] = {}
    if not env.get(SECRET_KEY_ENV):
        key_file = auth_dir / "secret_key"
        if not key_file.exists():
            write_private(key_file, secrets.token_hex(32) + "\n")
        out[SECRET_KEY_ENV] = key_file.read_text().strip()
    if own_config:
        return out
    ini = (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = sqlite:///{user_db}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    ).replace("%", "%%")  # configparser interpolates '%'
    out[AUTH_CONFIG_ENV] = str(write_private(auth_dir / "basic_auth.ini", ini))
    return out


def mlflow_server_command(artifacts: Path, port: int, host: str = "127.0.0.1", auth: bool = False) -> list[str]:
    """The ``mlflow server`` command line: no database URL on it (see :func:`mlflow_server_env`)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow) if mlflow.exists() else "mlflow",
        "server",
        "--artifacts-destination",
        str(Path(artifacts).resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *(["--app-name", "basic-auth"] if auth else []),
    ]


def mlflow_server_env(
    db_url: str,
    auth: bool = False,
    auth_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    default_permission: str = "EDIT",
) -> dict[str, str]:
    """The environment of ``mlflow server``: ``environ`` (default: this process's), the backend store
    URL in ``MLFLOW_BACKEND_STORE_URI`` (``mlflow server`` reads it; ``ps`` does not show it) and, with
    ``auth``, :func:`auth_environment` for ``auth_dir``."""
    env = dict(os.environ if environ is None else environ)
    env[BACKEND_ENV] = str(db_url)
    if auth:
        if auth_dir is None:
            raise ValueError("auth_dir is needed with auth")
        env.update(auth_environment(auth_dir, env, default_permission))
    return env


def start_mlflow(
    db_url: str,
    artifacts: Path,
    port: int | None = None,
    log: Path | None = None,
    *,
    host: str = "127.0.0.1",
    auth: bool | None = None,
    auth_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` in the background; return ``(process, url)`` once it answers.

    ``auth``: MLflow's basic-auth app with its files in ``auth_dir`` (see :func:`auth_environment`;
    ``environ`` must then hold the admin password on the first start); ``None``: only when ``host`` is
    not loopback; ``False`` there raises :class:`ConfigError` (:func:`resolve_auth`).
    """
    auth = resolve_auth(host, "auto" if auth is None else "on" if auth else "off")
    port = port or free_port()
    env = mlflow_server_env(db_url, auth=auth, auth_dir=auth_dir, environ=environ)
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        mlflow_server_command(artifacts, port, host, auth=auth),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{reach}:{port}"
    try:
        wait_port(port, 90.0, proc, host=reach)
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


def _serve_mlflow(args: argparse.Namespace) -> int:
    """``mlflow``: resolve the database (argument, environment or a local cluster), then exec ``mlflow server``."""
    auth = resolve_auth(args.host, args.auth)  # both checked before anything starts
    login_env = auth_environment(Path(args.auth_dir), default_permission=args.default_permission) if auth else {}
    db = args.db or os.environ.get(BACKEND_ENV) or os.environ.get("MLFLOW_DB")
    if args.db and mask_url(args.db) != args.db:
        print(
            "slimkit: warning: --db holds a password that every local user can read (ps); "
            f"give the URL in {BACKEND_ENV} instead",
            file=sys.stderr,
        )
    if not db:
        if not args.postgres_dir:
            raise ConfigError(
                f"no database for the MLflow server: set {BACKEND_ENV} (or MLFLOW_DB) to postgresql://..., "
                "or give --postgres-dir to start a local PostgreSQL cluster"
            )
        server = start_postgres(Path(args.postgres_dir), args.postgres_port)
        db = server.create_database("mlflow")
        server.create_database("optuna")
        print(
            f"search.storage={server.url('optuna', password=False)} "
            f"(password: export PGPASSFILE={server.password_file})"
        )
    env = {**mlflow_server_env(db), **login_env}
    shown = socket.getfqdn() if args.host in ("0.0.0.0", "::") else args.host
    login = (
        "login required: clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        if auth
        else "no login, loopback only"
    )
    print(f"tracking.uri=http://{shown}:{args.port} (backend {mask_url(db)}; {login})", flush=True)
    cmd = mlflow_server_command(Path(args.artifacts), args.port, args.host, auth=auth)
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    """``python -m slimkit.plugins.search.servers postgres|mlflow ...`` (foreground until Ctrl-C for mlflow).

    Bad settings end with one ``slimkit: error:`` line and exit 2.
    """
    parser = argparse.ArgumentParser(prog="python -m slimkit.plugins.search.servers")
    sub = parser.add_subparsers(dest="what", required=True)
    pg = sub.add_parser("postgres", help="start a local PostgreSQL cluster (background) and print its URLs")
    pg.add_argument("--dir", default=".slimkit/postgres")
    pg.add_argument("--port", type=int, default=5433)
    pg.add_argument("--database", default="mlflow")
    pg.add_argument("--stop", action="store_true")
    ml = sub.add_parser("mlflow", help="run mlflow server (foreground); the database URL comes from the environment")
    ml.add_argument("--db", default=None, help=f"prefer {BACKEND_ENV} in the environment: ps shows a command line")
    ml.add_argument("--postgres-dir", default=None, help="no database URL: start a local PostgreSQL cluster here")
    ml.add_argument("--postgres-port", type=int, default=5433)
    ml.add_argument("--artifacts", default="mlartifacts")
    ml.add_argument("--host", default="127.0.0.1")
    ml.add_argument("--port", type=int, default=5000)
    ml.add_argument("--auth", choices=AUTH_MODES, default="auto", help="auto: on unless the host is loopback")
    ml.add_argument("--auth-dir", default=".slimkit/mlflow-auth", help="basic-auth config, user store, secret key")
    ml.add_argument("--default-permission", choices=PERMISSIONS, default="EDIT")
    args = parser.parse_args(argv)
    try:
        if args.what == "mlflow":
            return _serve_mlflow(args)
        bin_dir = pg_bin()
        if bin_dir is None:
            raise ConfigError("PostgreSQL is not installed; apt-get install -y postgresql")
        server = Postgres(Path(args.dir), args.port, bin_dir)
        if args.stop:
            server.data_dir = Path(args.dir).resolve()
            server.stop()
            return 0
        server.start()
        for db in (args.database, "optuna"):
            server.create_database(db)
            print(server.url(db, password=False))
        print(f"slimkit: the password of {PG_USER}: export PGPASSFILE={server.password_file}", file=sys.stderr)
        return 0
    except SlimkitError as exc:
        print(f"slimkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (RuntimeError, OSError) as exc:
        print(f"slimkit: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
