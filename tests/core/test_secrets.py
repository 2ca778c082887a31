"""Secrets are redacted from whatever slimkit writes or logs (:mod:`slimkit.core.secrets`)."""

from __future__ import annotations

import pytest

from slimkit.core import ConfigError
from slimkit.core.secrets import MASK, is_secret_key, redact, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:password@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg://u:p@ss@h:5432/x?sslmode=require", "postgresql+psycopg://u:***@h:5432/x?sslmode=require"),
        ("mysql://:pw@host", "mysql://:***@host"),
        ("https://alice:t0k@mlflow:5000", "https://alice:***@mlflow:5000"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: the environment's
        ("sqlite:///study.db", "sqlite:///study.db"),
        ("http://host:5000/path", "http://host:5000/path"),
        ("postgresql://user:***@host/db", "postgresql://user:***@host/db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(f"cannot reach {url} (refused)") == f"cannot reach {expected} (refused)"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "PASSWD",
        "pwd",
        "secret",
        "client_secret",
        "api_key",
        "apiKey",
        "hf_token",
        "token",
        "access-token",
        "credentials",
        "tracking.tags.api_token",
        "+db.password",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["token_type_ids", "max_tokens", "tokenizer", "storage", "uri", "attention_mask", "input_ids", "passes"]
)
def test_not_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_config() -> None:
    config = {
        "search": {"storage": "postgresql://u:S3cretPw@localhost/x", "n_trials": 3},
        "pipeline": {"stages": {"search": {"storage": "postgresql://u:S3cretPw@localhost/x"}}},
        "tracking": {"tags": {"api_token": "S3cretTok", "team": "ml"}, "uri": None},
        "model": {"kwargs": {"password": 123, "secret": None, "token": ""}},
        "data": {"shapes": {"token_type_ids": [128]}, "list": ["x", "mysql://a:S3cretPw@h/d"]},
        "seed": 0,
    }
    out = redact(config)
    assert "S3cret" not in repr(out)
    assert out["search"] == {"storage": "postgresql://u:***@localhost/x", "n_trials": 3}
    assert out["pipeline"]["stages"]["search"]["storage"] == "postgresql://u:***@localhost/x"
    assert out["tracking"] == {"tags": {"api_token": MASK, "team": "ml"}, "uri": None}
    assert out["model"]["kwargs"] == {"password": MASK, "secret": None, "token": ""}  # nothing to hide in None/""
    assert out["data"] == {"shapes": {"token_type_ids": [128]}, "list": ["x", "mysql://a:***@h/d"]}
    assert config["search"]["storage"].endswith("S3cretPw@localhost/x"), "the input is not changed"
    assert redact(out) == out


def test_redact_text_overrides_and_queries() -> None:
    assert redact_text("+search.storage=postgresql://u:pw@h/x") == "+search.storage=postgresql://u:***@h/x"
    assert redact_text("+tracking.tags.api_token=abc,seed=1") == "+tracking.tags.api_token=***,seed=1"
    assert redact_text("http://h/p?token=abc&x=1") == "http://h/p?token=***&x=1"
    assert redact_text("data.shapes.token_type_ids=[128]") == "data.shapes.token_type_ids=[128]"
    # as Hydra's sweeper escapes a job's overrides (multirun)
    assert redact_text(r"+search.storage=postgresql\://u\:pw@h/x") == r"+search.storage=postgresql\://u\:***@h/x"
    assert redact_text(r"+tracking.tags.api_token=ab\,cd,seed=1") == "+tracking.tags.api_token=***,seed=1"


def test_errors_never_carry_a_password() -> None:
    err = ConfigError("cannot open postgresql://u:S3cretPw@db/x;\nset password=S3cretPw")
    assert str(err) == "cannot open postgresql://u:***@db/x; set password=***"


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from slimkit.core.secrets import redact_logs

    before = logging.getLogRecordFactory()
    try:
        redact_logs()
        redact_logs()  # idempotent: one wrapper
        with caplog.at_level(logging.INFO, logger="hydra.launcher"):
            logging.getLogger("hydra.launcher").info("\t#%d : %s", 0, r"+db.storage=postgresql\://u\:S3cretPw@h/x")
        assert caplog.messages == [r"	#0 : +db.storage=postgresql\://u\:***@h/x"]
    finally:
        logging.setLogRecordFactory(before)
