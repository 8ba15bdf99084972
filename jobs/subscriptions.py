"""Consents from the warehouse as Actito subscriptions, the way Didomi's integration sends them.

``upsert_mode = false`` (the default, as in Didomi) imports with UPDATE_ONLY: a consent for a
profile Actito does not know is not propagated, and Actito's report lists it as such.
"""

from __future__ import annotations

from etl.runtime.runs import RunContext
from jobs.profiles import deliver_rows

KIND = "subscriptions"


def run(context: RunContext) -> None:
    deliver_rows(context)
