"""Secrets in the configuration: ``${VAR}`` (or ``VAR_FILE``) and ``*_file`` keys; literal secrets are refused."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from etl.config.base import REFUSED_SECRET, SECRET_KEYS, VARIABLE, Problem, dotted
from etl.config.model import Config
from etl.logs import redact, register_secret, url_secrets


class LeftAsWritten(Mapping[str, str]):
    """The environment, where a variable that is not set (and not ``needed``) reads as ``${NAME}``."""

    def __init__(self, environ: Mapping[str, str], *, needed: set[str]) -> None:
        self._environ, self._needed = environ, needed

    def __getitem__(self, name: str) -> str:
        if name in self._environ or name in self._needed or name.endswith("_FILE"):
            return self._environ[name]
        return f"${{{name}}}"

    def __contains__(self, name: object) -> bool:
        return name in self._environ or (isinstance(name, str) and name not in self._needed
                                         and not name.endswith("_FILE"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def interpolate(node: Any, where: tuple[str, ...], environ: Mapping[str, str], problems: list[Problem]) -> Any:
    """Replace ``${VAR}`` everywhere, read ``*_file`` secrets, and refuse literal secrets."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            _interpolate_key(out, key, value, (*where, str(key)), environ, problems)
        return out
    if isinstance(node, list):
        return [interpolate(item, (*where, str(i)), environ, problems) for i, item in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _substitute(node, where, environ, problems)
    return node


def _interpolate_key(out: dict[str, Any], key: str, value: Any, path: tuple[str, ...], environ: Mapping[str, str],
                     problems: list[Problem]) -> None:
    if key.endswith("_file") and key[: -len("_file")] in SECRET_KEYS:
        secret = _read_secret_file(interpolate(value, path, environ, problems), path, problems)
        if secret is not None:
            out[key[: -len("_file")]] = secret
    elif key in SECRET_KEYS and isinstance(value, str) and not VARIABLE.search(value):
        problems.append((dotted(path), f"a secret cannot be written in the file: use \"${{ENV_VAR}}\" or {key}_file"))
        out[key] = REFUSED_SECRET  # present, so that the rest of the table is checked as written
    elif key in ("url", "state_url") and isinstance(value, str) and _has_literal_password(value):
        problems.append((dotted(path), "the URL holds a literal password: write it as ${ENV_VAR} inside the URL"))
        out[key] = redact(value)  # the URL without its password: not also "url: required key is missing"
    else:
        out[key] = interpolate(value, path, environ, problems)


def _substitute(text: str, where: tuple[str, ...], environ: Mapping[str, str], problems: list[Problem]) -> str:
    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in environ:
            # a Kubernetes Secret made from a file keeps the file's final newline
            return environ[name].rstrip("\r\n")
        secret_file = environ.get(f"{name}_FILE")
        if secret_file:
            try:
                return Path(secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append((dotted(where), f"${name}_FILE points to {secret_file!r}: {exc.strerror}"))
                return ""
        problems.append((dotted(where), f"environment variable {name} is not set (nor {name}_FILE)"))
        return ""

    return VARIABLE.sub(value_of, text)


def _read_secret_file(value: Any, where: tuple[str, ...], problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append((dotted(where), "expected the path of a file holding the secret"))
        return None
    try:
        return Path(value).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append((dotted(where), f"cannot read {value!r}: {exc.strerror}"))
        return None


def _has_literal_password(url: str) -> bool:
    match = re.match(r"^[^:/]+://[^:/@]*:([^@]*)@", url)
    return bool(match and match.group(1) and not VARIABLE.fullmatch(match.group(1)))


def register_secrets(config: Config) -> None:
    """Hand every secret to the log redactor, including the password inside each URL."""
    candidates: list[SecretStr | None] = [config.settings.state_url, config.alerts.webhook_url]
    if config.alerts.email is not None:
        candidates.append(config.alerts.email.password)
    candidates += [warehouse.url for warehouse in config.warehouses.values()]
    for destination in config.destinations.values():
        candidates += destination.secrets()
    for secret in candidates:
        if secret is None:
            continue
        value = secret.get_secret_value()
        for part in url_secrets(value) if "://" in value else [value]:
            register_secret(part)
