"""Consents from the warehouse as Actito subscriptions, the way Didomi's integration sends them.

``upsert_mode = false`` (the default, as in Didomi) imports with UPDATE_ONLY: a consent for a
profile Actito does not know is not propagated, and Actito's report lists it as such.
"""

from __future__ import annotations

from etl.destinations.actito.imports import ImportPlan, MappingFactory, run_plan, target_for
from etl.destinations.actito.presets import didomi_mapping
from etl.config import Config, SubscriptionsActivation
from etl.runtime.runs import RunContext
from jobs.profiles import by_name

KIND = "subscriptions"


def plan(config: Config, name: str) -> ImportPlan:
    activation = config.activation_of(name, SubscriptionsActivation)
    mapping_for: MappingFactory = (
        (
            lambda columns, table: didomi_mapping(
                columns,
                user_key=activation.key,
                subscriptions=activation.subscriptions,
                metadata_columns=activation.metadata,
            )
        )
        if activation.preset == "didomi"
        else by_name(activation, activation.key, activation.subscriptions, extra=activation.metadata)
    )
    mode = "CREATE_UPDATE" if activation.upsert_mode else "UPDATE_ONLY"
    return ImportPlan(activation.destination, target_for(config, name, custom=False, mode=mode), mapping_for)


def run(context: RunContext) -> None:
    run_plan(context, plan(context.config, context.activation))
