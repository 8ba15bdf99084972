"""Logging set-up and secret redaction.

Every secret the configuration resolves is registered here, and a filter on the root handler
replaces it wherever it would be printed — log lines, exception text, JSON fields — so a key
that reaches a message by accident (a driver echoing a URL, say) still never leaves the process.
"""

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
    """Remember a secret so that `redact` hides it; very short values are ignored (they would mask ordinary words)."""
    global _pattern
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            if value not in _secrets:
                _secrets.add(value)
                _pattern = _secrets_pattern(_secrets)


def _secrets_pattern(secrets: set[str]) -> re.Pattern[str]:
    """Each secret as a whole token: never inside a longer word, so a password ``postgres`` does not turn
    ``postgresql://`` into ``***ql://``, nor ``x`` every word that holds an x. Longest first, so a secret
    that contains another is hidden whole."""
    alternatives = "|".join(re.escape(secret) for secret in sorted(secrets, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def redact(text: str) -> str:
    """``text`` without secrets: URL passwords and secret query parameters by their place, whatever
    their value, then every registered secret value where it stands as a token of its own."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def url_secrets(url: str) -> list[str]:
    """The secret values a URL carries (its password, its secret-looking query parameters), to register."""
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
    """One JSON object per line, for log collectors (Kubernetes, journald, Loki)."""

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
    """Send logs to stderr, text or JSON lines; stdout stays free for the command's own output."""
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
