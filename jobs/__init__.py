"""One module per job kind; each exposes ``KIND`` and ``run(context)``."""

from __future__ import annotations

import importlib

from etl.runtime.runs import JobBody

KINDS = ("audience", "profiles", "subscriptions", "interactions")


def job_for(kind: str) -> JobBody:
    """Imported lazily so an audience-only set-up never loads the Actito client."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    body: JobBody = importlib.import_module(f"jobs.{kind}").run
    return body
