"""One module per job kind; each exposes ``KIND`` and ``run(context)``."""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING

from etl.runtime.runs import JobBody

if TYPE_CHECKING:
    from etl.destinations.actito.imports import ImportPlan
    from etl.config import Config

KINDS = ("audience", "profiles", "subscriptions", "interactions")


def job_for(kind: str) -> JobBody:
    """The run body of a kind; imported lazily so an audience-only set-up never loads the Actito client."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    body: JobBody = importlib.import_module(f"jobs.{kind}").run
    return body


def import_plan(config: Config, name: str) -> ImportPlan:
    """The plan of an import activation (profiles, subscriptions, interactions), for pre-flight checks."""
    kind = config.activations[name].kind
    if kind not in KINDS[1:]:
        raise ValueError(f"{name} is not an import activation")
    plan: ImportPlan = importlib.import_module(f"jobs.{kind}").plan(config, name)
    return plan
