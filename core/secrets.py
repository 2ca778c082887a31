"""Keep secrets out of what slimkit writes and logs: config, reports, MLflow params, errors.

:func:`redact` returns a copy of a config (mappings, lists, strings) in which

- the password of every URL is ``***`` (``postgresql://user:***@host/db``), see :func:`redact_url`;
- the value of every key named like a secret (:func:`is_secret_key`: ``password``, ``passwd``,
  ``pwd``, ``secret``, ``api_key``, ``private_key``, ``credential(s)``, ``token``, ``access_token``...)
  is ``***``, as a mapping key and as ``key=value`` inside text (a Hydra override, a query string).

The run itself keeps the real values (``RunSpec.model``, ``.tracking``, the stage configs): only
what is written or logged is redacted. Framework-free (the standard library only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

#: What a redacted value is replaced with.
MASK = "***"

# scheme://user:password@  (the password runs to the last '@' before the path or whitespace); also
# as Hydra's sweeper escapes it in a job's overrides: postgresql\://user\:password@host
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://[^\s:/@\\]*)(?P<colon>\\?:)(?P<password>[^\s/]*)@"
)
# key=value in free text: an override (+a.b.password=x), a query string (?token=x), a log line
_KEY_VALUE = re.compile(r"(?P<key>[+~]?[A-Za-z_][\w.@/\-]*)=(?P<value>(?:\\.|[^\s,;&\\])*)")
_WORDS = re.compile(r"[^a-z0-9]+")
_SECRET_PARTS = ("password", "passwd", "secret", "api_key", "apikey", "private_key")
_SECRET_LAST_WORDS = frozenset({"token", "pwd", "credential", "credentials"})


def is_secret_key(key: Any) -> bool:
    """Whether a config key names a secret: its last dotted segment contains ``password``,
    ``passwd``, ``secret``, ``api_key``/``apikey`` or ``private_key``, or ends in the word ``token``,
    ``pwd`` or ``credential(s)`` (``hf_token``, not ``token_type_ids`` or ``max_tokens``)."""
    name = re.split(r"[./@]", str(key).lstrip("+~"))[-1].lower().replace("-", "_")
    if any(part in name for part in _SECRET_PARTS):
        return True
    words = [w for w in _WORDS.split(name) if w]
    return bool(words) and words[-1] in _SECRET_LAST_WORDS


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    ``postgresql://user:pw@host/db`` becomes ``postgresql://user:***@host/db``; a URL without a
    password (``postgresql://user@host/db``) and any other text are left as they are.
    """
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{m['colon']}{MASK}@" if m["password"] else m[0], str(text))


def redact_text(text: str) -> str:
    """``text`` with URL passwords (:func:`redact_url`) and the values of ``key=value`` pairs whose
    key names a secret (``+db.password=x``, ``?token=x``) replaced by ``***``."""

    def pair(m: re.Match[str]) -> str:
        return f"{m['key']}={MASK}" if m["value"] and is_secret_key(m["key"]) else m[0]

    return _KEY_VALUE.sub(pair, redact_url(text))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (mappings, lists, tuples, strings, scalars) safe to write or log.

    Values under a key that names a secret (:func:`is_secret_key`) become ``***`` (``None`` and
    ``""`` stay as they are: there is nothing to hide); every string is :func:`redact_text`-ed.
    Other values are returned as they are. ``redact(redact(x)) == redact(x)``.
    """
    if isinstance(obj, Mapping):
        return {k: _mask(v) if is_secret_key(k) else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_logs() -> None:
    """Redact every log record of this process from now on (:func:`redact_text` of its message),
    whichever logger and handler it goes to: Hydra's launcher, for one, logs each job's overrides.
    Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_slimkit_redacts", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself when it emits
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    redacting: Callable[..., logging.LogRecord] = make
    redacting._slimkit_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


def _mask(value: Any) -> Any:
    if value is None or value == "":
        return value
    return MASK
