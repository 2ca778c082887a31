"""A real run with a password in its config: no file, MLflow param or tag holds the password.

The run (module-scoped) is the fast ``magnitude`` pipeline with ``+search.storage=postgresql://...``
(kept in the resolved config, unused by this pipeline) and a tracking tag named like a token, into
an MLflow store of its own in the run's folder, so that every file the run wrote can be read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PASSWORD = "S3cretPw"
TOKEN = "S3cretTok"
STORAGE = f"postgresql://u:{PASSWORD}@localhost/x"
SECRETS = [f"+search.storage={STORAGE}", f"+tracking.tags.api_token={TOKEN}"]


@pytest.fixture(scope="module")
def secret_run(run_cli, fast, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    cwd = tmp_path_factory.mktemp("secrets")
    uri = f"sqlite:///{(cwd / 'store' / 'mlflow.db').as_posix()}"
    proc = run_cli([*fast, f"tracking.uri={uri}", "tracking.experiment=secrets", *SECRETS], cwd)
    return proc, cwd


def test_no_file_holds_the_password(secret_run, show, one_run_dir) -> None:
    proc, cwd = secret_run
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(cwd)
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    for expected in ("report.json", "report.md", "run.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert expected in names, sorted(names)
    files = [p for p in cwd.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any("mlruns" in p.parts for p in files), files
    leaks = [str(p) for p in files if PASSWORD.encode() in p.read_bytes() or TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert PASSWORD not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr


def test_the_written_config_is_redacted_not_dropped(secret_run, one_run_dir, load_report) -> None:
    _, cwd = secret_run
    run_dir = one_run_dir(cwd)
    report = load_report(run_dir)
    assert report["config"]["search"]["storage"] == "postgresql://u:***@localhost/x"
    assert report["config"]["tracking"]["tags"]["api_token"] == "***"
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "+search.storage=postgresql://u:***@localhost/x" in overrides
    assert "+tracking.tags.api_token=***" in overrides


def test_hydra_config_is_otherwise_as_hydra_wrote_it(secret_run, fast, one_run_dir) -> None:
    from omegaconf import OmegaConf

    from slimkit.pipelines.config import compose

    _, cwd = secret_run
    run_dir = one_run_dir(cwd)
    uri = f"sqlite:///{(cwd / 'store' / 'mlflow.db').as_posix()}"
    expected = OmegaConf.to_yaml(compose([*fast, f"tracking.uri={uri}", "tracking.experiment=secrets", *SECRETS]))
    expected = expected.replace(STORAGE, "postgresql://u:***@localhost/x").replace(TOKEN, "'***'")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == expected


def test_no_mlflow_param_or_tag_holds_the_password(secret_run, show) -> None:
    from mlflow import MlflowClient

    proc, cwd = secret_run
    assert proc.returncode == 0, show(proc)
    client = MlflowClient(tracking_uri=f"sqlite:///{(cwd / 'store' / 'mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 2  # the run and its stage
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.params["search.storage"] == "postgresql://u:***@localhost/x"
    assert parent.data.params["tracking.tags.api_token"] == "***"
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values(), run.info.run_name or ""]
        assert not [v for v in values if PASSWORD in v or TOKEN in v], run.info.run_id


def test_the_real_value_is_kept_to_connect(tmp_path: Path) -> None:
    """pipeline=search: the search stage's config (what connects) keeps the password; the run's
    config (what is written and logged) and the MLflow params of the stage do not."""
    from slimkit.core.plugins import get_registry
    from slimkit.pipelines.config import build_spec, compose, to_plain
    from slimkit.plugins.tracking.mlflow import flatten_params

    plain = to_plain(compose(["pipeline=search", f"search.storage={STORAGE}", "tracking=none"]))
    spec = build_spec(plain, get_registry(), tmp_path)
    stage = next(s for s in spec.stages if s.name == "search")
    assert stage.config.storage == STORAGE
    assert plain["search"]["storage"] == STORAGE, "build_spec does not change its input"
    assert spec.config["search"]["storage"] == spec.config["pipeline"]["stages"]["search"]["storage"]
    assert PASSWORD not in repr(spec.config)
    assert PASSWORD not in repr(flatten_params({"storage": stage.config.storage}))


def test_a_sweep_writes_no_password(run_cli, fast, show, tmp_path: Path) -> None:
    """A multirun: Hydra escapes the jobs' overrides (``postgresql\\://u\\:pw@...``) in ``.hydra/`` and
    writes ``multirun.yaml``, and its launcher logs each job's overrides; none holds the password."""
    uri = f"sqlite:///{(tmp_path / 'store' / 'mlflow.db').as_posix()}"
    proc = run_cli(["-m", *fast, f"tracking.uri={uri}", *SECRETS, "seed=1,2"], tmp_path)
    assert proc.returncode == 0, show(proc)
    assert "Launching 2 jobs" in proc.stdout, show(proc)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in files) and sum(p.name == "overrides.yaml" for p in files) == 2
    leaks = [str(p) for p in files if PASSWORD.encode() in p.read_bytes() or TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert PASSWORD not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
