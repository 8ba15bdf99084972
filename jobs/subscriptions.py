"""Consents as Actito subscriptions, as Didomi sends them: by default, none for a profile Actito does not know."""

from __future__ import annotations

from etl.runtime.runs import RunContext
from jobs.profiles import deliver_rows

KIND = "subscriptions"


def run(context: RunContext) -> None:
    deliver_rows(context)
