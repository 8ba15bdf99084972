"""What every table of the configuration shares: the frozen model, secret keys, paths, problems."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

#: one problem of a configuration: (where it is, what is wrong)
Problem = tuple[str, str]

#: what stands for a secret written literally in the file, which is refused (never kept, never shown)
REFUSED_SECRET = "***"

#: keys whose values are secrets: they must be interpolated, never literal
SECRET_KEYS = frozenset({"api_key", "password", "key_passphrase", "webhook_url"})
#: a ``${VAR}`` reference to the environment
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigModel(BaseModel):
    """Every table of the file: an unknown key is an error (a typo must not be ignored), values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def anchored(base_dir: Path, value: Path) -> Path:
    """A path of the configuration: a relative one is relative to the configuration file's directory."""
    return value if value.is_absolute() else base_dir / value


def dotted(path: Iterable[str]) -> str:
    """A key's location as people read it: ``[activations.NAME] file.name``, ``settings.state_url``."""
    parts = list(path)
    if len(parts) >= 2 and parts[0] in ("warehouses", "destinations", "activations"):
        head = f"[{parts[0]}.{parts[1]}]"
        return f"{head} {'.'.join(parts[2:])}" if len(parts) > 2 else head
    return ".".join(parts)
