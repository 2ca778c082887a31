"""The team server's safety (``plugins/search/servers.py``, ``make mlflow-server``), without starting MLflow.

A login whenever the host is not loopback, the database URL kept off command lines and out of what is
printed, the local PostgreSQL cluster with passwords (scram-sha-256), a non-superuser owner and a
0600 password file. The cluster tests at the end use the real binaries (the ``postgres`` fixture).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slimkit.core import ConfigError
from slimkit.plugins.search import servers
from slimkit.plugins.search.servers import (
    ADMIN_PASSWORD_ENV,
    AUTH_CONFIG_ENV,
    BACKEND_ENV,
    SECRET_KEY_ENV,
    Postgres,
    is_loopback,
    main,
    mask_url,
    pgpass_lines,
    resolve_auth,
    role_sql,
    write_private,
)

REPO = Path(__file__).resolve().parents[3]
SECRET = "s3cr3t-db-pw"
DB_URL = f"postgresql://team:{SECRET}@db.example:5432/mlflow"
ADMIN_PW = "correct-horse-battery"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def exec_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """``os.execvpe`` recorded instead of replacing the test process with ``mlflow server``."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(servers.os, "execvpe", lambda file, args, env: calls.append((list(args), dict(env))))
    for name in (BACKEND_ENV, "MLFLOW_DB", ADMIN_PASSWORD_ENV, AUTH_CONFIG_ENV, SECRET_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("mlflow.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert resolve_auth(host) is (not loopback)  # auto: a login exactly when others can reach it
    assert resolve_auth(host, "on") is True


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "mlflow.example.com"])
def test_a_non_loopback_host_without_auth_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=f"refusing to serve MLflow on {re.escape(host)} without authentication"):
        resolve_auth(host, "off")
    assert resolve_auth("127.0.0.1", "off") is False


def test_cli_refuses_0_0_0_0_without_auth_in_one_line(
    exec_calls: list, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKEND_ENV, DB_URL)
    auth_dir = tmp_path / "auth"
    rc = main(["mlflow", "--host", "0.0.0.0", "--auth", "off", "--auth-dir", str(auth_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and not exec_calls
    assert err.count("\n") == 1 and err.startswith("slimkit: error: refusing to serve MLflow on 0.0.0.0"), err
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in err and SECRET not in err
    assert not auth_dir.exists()


@pytest.mark.parametrize("password", [None, "short"])
def test_the_first_start_with_auth_needs_an_admin_password(
    password: str | None,
    exec_calls: list,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if password is not None:
        monkeypatch.setenv(ADMIN_PASSWORD_ENV, password)
    auth_dir, pg_dir = tmp_path / "auth", tmp_path / "pg"
    rc = main(["mlflow", "--host", "0.0.0.0", "--auth-dir", str(auth_dir), "--postgres-dir", str(pg_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and not exec_calls
    assert err.count("\n") == 1 and "set MLFLOW_AUTH_ADMIN_PASSWORD" in err and "12 characters" in err, err
    assert not auth_dir.exists() and not pg_dir.exists()  # checked before anything is written or started


def test_the_database_url_goes_through_the_environment_and_is_printed_masked(
    exec_calls: list, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DB", DB_URL)  # what `make mlflow-server` exports
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, ADMIN_PW)
    os.chmod(tmp_path, 0o755)
    auth_dir = tmp_path / "state" / "auth"
    rc = main(["mlflow", "--host", "0.0.0.0", "--port", "5077", "--auth-dir", str(auth_dir)])
    out, err = capsys.readouterr()
    assert rc == 0 and len(exec_calls) == 1, err
    cmd, env = exec_calls[0]
    assert SECRET not in " ".join(cmd) and "--backend-store-uri" not in cmd  # ps shows argv
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "5077"
    assert env[BACKEND_ENV] == DB_URL and env[ADMIN_PASSWORD_ENV] == ADMIN_PW
    assert SECRET not in out + err
    assert "postgresql://team:***@db.example:5432/mlflow" in out and "MLFLOW_TRACKING_USERNAME" in out

    # MLflow's auth files: private, in a private folder; the folders above keep their permissions
    config = Path(env[AUTH_CONFIG_ENV])
    assert config.parent == auth_dir.absolute() and _mode(config) == 0o600 and _mode(auth_dir) == 0o700
    assert _mode(tmp_path) == 0o755
    text = config.read_text()
    assert f"database_uri = sqlite:///{auth_dir.absolute() / 'basic_auth.db'}" in text
    assert "default_permission = EDIT" in text and ADMIN_PW not in text
    key_file = auth_dir / "secret_key"
    assert _mode(key_file) == 0o600 and env[SECRET_KEY_ENV] == key_file.read_text().strip()

    # loopback: no login unless asked, same environment discipline; the same secret key on a restart
    exec_calls.clear()
    assert main(["mlflow", "--auth-dir", str(auth_dir)]) == 0
    cmd, env = exec_calls[0]
    assert "--app-name" not in cmd and env[BACKEND_ENV] == DB_URL and SECRET not in " ".join(cmd)
    exec_calls.clear()
    assert main(["mlflow", "--auth", "on", "--auth-dir", str(auth_dir)]) == 0
    assert exec_calls[0][1][SECRET_KEY_ENV] == key_file.read_text().strip()


def test_a_team_auth_config_is_used_as_it_is(exec_calls: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, DB_URL)
    monkeypatch.setenv(AUTH_CONFIG_ENV, str(tmp_path / "team.ini"))
    monkeypatch.setenv(SECRET_KEY_ENV, "team-key")
    assert main(["mlflow", "--host", "0.0.0.0", "--auth-dir", str(tmp_path / "auth")]) == 0
    env = exec_calls[0][1]
    assert env[AUTH_CONFIG_ENV] == str(tmp_path / "team.ini") and env[SECRET_KEY_ENV] == "team-key"
    assert not (tmp_path / "auth").exists()


def test_a_password_given_with_db_on_the_command_line_is_warned_about(
    exec_calls: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mlflow", "--db", DB_URL, "--auth-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "slimkit: warning: --db holds a password" in err and SECRET not in out + err
    assert exec_calls[0][1][BACKEND_ENV] == DB_URL and SECRET not in " ".join(exec_calls[0][0])


def test_no_database_and_no_local_cluster_is_one_line(
    exec_calls: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mlflow", "--auth-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set MLFLOW_BACKEND_STORE_URI" in err


def test_mask_url() -> None:
    assert mask_url(DB_URL) == "postgresql://team:***@db.example:5432/mlflow"
    assert mask_url("postgresql://team@db/x") == "postgresql://team@db/x"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_mlflow_server_keeps_the_password_off_command_lines(tmp_path: Path) -> None:
    stamp = "-o", ".venv/.installed"  # never (re)install from a test
    dry = subprocess.run(
        ["make", "-n", *stamp, "mlflow-server", f"MLFLOW_DB={DB_URL}"], cwd=REPO, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert SECRET not in dry.stdout and "--db" not in dry.stdout  # the recipe's shell command lines
    # a password on make's own command line (which ps shows while the server runs) is warned about;
    # serving 0.0.0.0 without a login is refused before anything starts
    env = {k: v for k, v in os.environ.items() if k not in (BACKEND_ENV, "MLFLOW_DB", ADMIN_PASSWORD_ENV)}
    run = subprocess.run(
        ["make", *stamp, "mlflow-server", f"MLFLOW_DB={DB_URL}", "MLFLOW_HOST=0.0.0.0", "MLFLOW_AUTH=off"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "slimkit: warning: the password in MLFLOW_DB on make's command line" in run.stderr
    assert "slimkit: error: refusing to serve MLflow on 0.0.0.0 without authentication" in run.stderr
    assert SECRET not in run.stdout + run.stderr


# -- the local PostgreSQL cluster, without its binaries -------------------------------------------


def test_write_private_is_0600_and_leaves_existing_folders_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    old = os.umask(0)
    try:
        path = write_private(tmp_path / "new" / "secret", "x\n")
        write_private(path, "y\n")  # replaced atomically, still private
    finally:
        os.umask(old)
    assert path.read_text() == "y\n" and _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(tmp_path) == 0o755
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temp file left


def test_cluster_command_lines_check_passwords_and_keep_fsync(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "data", 5433, Path("/pg/bin"))
    initdb = pg.initdb_command()
    assert "--auth-host=scram-sha-256" in initdb and "--auth-local=peer" in initdb
    assert not any("trust" in a for a in initdb)
    start = " ".join(pg.start_command())
    assert "listen_addresses=127.0.0.1" in start and "fsync" not in start
    assert "fsync=off" in " ".join(Postgres(tmp_path / "data", 5433, Path("/pg/bin"), fsync=False).start_command())
    assert pg.password_file == tmp_path / "data.pgpass"
    sql = role_sql("pw_0-9")
    assert "NOSUPERUSER" in sql and not re.search(r"(?<!NO)SUPERUSER", sql) and "PASSWORD 'pw_0-9'" in sql
    assert pgpass_lines(5433, "pw") == "127.0.0.1:5433:*:slimkit:pw\nlocalhost:5433:*:slimkit:pw\n"
    with pytest.raises(ValueError):
        role_sql("it's")


def test_a_cluster_without_slimkits_password_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")  # an older slimkit's trust cluster
    with pytest.raises(ConfigError, match="without slimkit's password file"):
        Postgres(data, 5433, tmp_path / "no-bin").start()


def test_cluster_init_keeps_the_password_off_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fake initdb/postgres record their argv and stdin; as a non-root user (no runuser, no chown)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name, body in {
        "initdb": 'echo 15 > "$2/PG_VERSION"',  # initdb -D DIR ...
        "postgres": f'cat > "{tmp_path}/stdin"',
    }.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{body}\n')
        script.chmod(0o755)
    monkeypatch.setattr(servers.os, "geteuid", lambda: 1000)
    pg = Postgres((tmp_path / "data").resolve(), 5433, bin_dir)
    pg._init()
    password = pg.password()
    assert len(password) >= 24 and _mode(pg.password_file) == 0o600
    assert pg.password_file.read_text() == pgpass_lines(5433, password)
    assert password in (tmp_path / "stdin").read_text() and "NOSUPERUSER" in (tmp_path / "stdin").read_text()
    calls = log.read_text()
    assert password not in calls and "scram-sha-256" in calls and "--single" in calls
    assert mask_url(pg.url("optuna")) == "postgresql://slimkit:***@127.0.0.1:5433/optuna"
    assert pg.url("optuna", password=False) == "postgresql://slimkit@127.0.0.1:5433/optuna"


def test_a_failed_role_creation_never_shows_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fail"
    script.write_text(
        '#!/bin/sh\nread sql\necho "ERROR:  syntax error in $sql" >&2\necho "STATEMENT:  $sql" >&2\nexit 0\n'
    )
    script.chmod(0o755)
    with pytest.raises(RuntimeError) as info:
        servers._run_quiet([str(script)], "creating the role", input=role_sql("topsecret"), secret="topsecret")
    assert "ERROR" in str(info.value) and "topsecret" not in str(info.value)


# -- the real cluster (the postgres fixture) -------------------------------------------------------


def test_the_real_cluster_checks_passwords_and_its_owner_is_no_superuser(postgres: Any) -> None:
    import psycopg

    hba = [ln.split() for ln in (postgres.data_dir / "pg_hba.conf").read_text().splitlines()]
    methods = {ln[-1] for ln in hba if ln and not ln[0].startswith("#")}
    assert methods == {"peer", "scram-sha-256"}, methods
    assert _mode(postgres.password_file) == 0o600
    postgres.create_database("team_check")
    kw = {"host": "127.0.0.1", "port": postgres.port, "connect_timeout": 5}
    with psycopg.connect(**kw, user="slimkit", password=postgres.password(), dbname="team_check") as conn:
        row = conn.execute(
            "SELECT r.rolsuper, r.rolcreaterole, pg_get_userbyid(d.datdba) FROM pg_roles r, pg_database d "
            "WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
        assert row == (False, False, "slimkit")
        assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
    for user, password in (("slimkit", None), ("slimkit", "wrong"), ("postgres", None), ("root", None)):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**kw, user=user, password=password, dbname="postgres").close()
