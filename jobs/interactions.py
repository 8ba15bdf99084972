"""Interactions (participations, purchases, visits) into an Actito custom table of type
INTERACTIONS, upserted on the table's primary key and linked to profiles by its foreign key."""

from __future__ import annotations

from etl.runtime.runs import RunContext
from jobs.profiles import deliver_rows

KIND = "interactions"


def run(context: RunContext) -> None:
    deliver_rows(context)
