"""Logging set-up and secret redaction: every registered secret is replaced wherever it would be
printed, so a key that reaches a message by accident (a driver echoing a URL) never leaves the process."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

REDACTED = "***"
_MIN_SECRET_LENGTH = 4

#: the password of a URL's user part, up to the last ``@`` of the address (a password may hold one)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s]*)@(?=[^\s@]*(?:$|[\s/?#]))")
#: a URL query parameter whose name says it holds a secret: ``?password=…``, ``&api_key=…``
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:[A-Za-z_]*(?:password|passwd|pwd|secret|token|api_?key|apikey|passphrase|auth)"
    r"[A-Za-z_]*)=)(?P<value>[^&;#\s'\"]*)",
    re.IGNORECASE,
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
#: one pattern for every registered secret, rebuilt when one is added
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Very short values are ignored: they would mask ordinary words."""
    global _pattern
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            if value not in _secrets:
                _secrets.add(value)
                _pattern = _secrets_pattern(_secrets)


def _secrets_pattern(secrets: set[str]) -> re.Pattern[str]:
    """Whole tokens only, so a password ``postgres`` leaves ``postgresql://`` alone; longest first, so a
    secret containing another is hidden whole."""
    alternatives = "|".join(re.escape(secret) for secret in sorted(secrets, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def redact(text: str) -> str:
    """URL passwords and secret query parameters by their place, then every registered secret."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def url_secrets(url: str) -> list[str]:
    found = [m["password"] for m in _URL_PASSWORD.finditer(url)]
    found += [m["value"] for m in _QUERY_SECRET.finditer(url)]
    return [unquote(value) for value in found if value] + [value for value in found if value]


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class _JsonFormatter(logging.Formatter):

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower():7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        return text


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Logs go to stderr: stdout stays free for the command's own output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("paramiko", "urllib3", "asyncio", "pyftpdlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
