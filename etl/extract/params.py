"""The values a run binds to its query: the built-in :run_date and :run_at, then the declared ones."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from etl.config import ActivationBase
from etl.config.sql import bind_parameter_names
from etl.errors import ExtractError


def local_time(activation: ActivationBase, when: datetime) -> datetime:
    """The run's wall-clock time where the audience lives: drives :run_date and file-name dates."""
    zone = ZoneInfo(activation.schedule.timezone) if activation.schedule else UTC
    return when.astimezone(zone)


def query_params(activation: ActivationBase, when: datetime) -> dict[str, Any]:
    local = local_time(activation, when)
    return {"run_date": local.date(), "run_at": when.astimezone(UTC).replace(tzinfo=None), **activation.params}


def bound_values(sql: str, params: Mapping[str, object], where: str) -> dict[str, object]:
    """The values of the parameters ``sql`` uses; the others are ignored, so that callers can always
    offer the built-in ones. One the query uses but ``params`` lacks is reported before connecting."""
    used = bind_parameter_names(sql)
    missing = used - params.keys()
    if missing:
        names = ", ".join(f":{name}" for name in sorted(missing))
        raise ExtractError(
            f"the query uses {names} but no value is given for {'it' if len(missing) == 1 else 'them'}",
            where=where,
            hint="declare it under the activation's params, or fix its spelling in the query",
        )
    return {name: params[name] for name in used}
