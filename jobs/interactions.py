"""Interactions (participations, purchases, visits) into an Actito custom table of type
INTERACTIONS, upserted on the table's primary key and linked to profiles by its foreign key."""

from __future__ import annotations

from etl.destinations.actito.imports import ImportPlan, MappingFactory, run_plan, target_for
from etl.destinations.actito.presets import qualifio_interaction_mapping
from etl.config import Config, InteractionsActivation
from etl.runtime.runs import RunContext
from jobs.profiles import by_name

KIND = "interactions"


def plan(config: Config, name: str) -> ImportPlan:
    activation = config.activation_of(name, InteractionsActivation)
    mapping_for: MappingFactory = (
        (lambda columns, table: qualifio_interaction_mapping(columns, key=table.primary_key or "participationId"))
        if activation.preset == "qualifio"
        else (lambda columns, table: by_name(activation, table.primary_key or "", {})(columns, table))
    )
    target = target_for(config, name, custom=True, mode="CREATE_UPDATE")
    return ImportPlan(activation.destination, target, mapping_for)


def run(context: RunContext) -> None:
    run_plan(context, plan(context.config, context.activation))
