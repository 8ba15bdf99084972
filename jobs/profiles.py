"""Profile attributes and subscriptions, from the warehouse into an Actito profile table.

Columns map to attributes by a preset (``qualifio``: Qualifio's variable names), by an explicit
``attributes`` table, or — by default — by name: alias the SQL columns to Actito's attribute names.
"""

from __future__ import annotations

from collections.abc import Sequence

from etl.destinations.actito.client import Table
from etl.destinations.actito.imports import ImportPlan, MappingFactory, rule_for, run_plan, target_for
from etl.destinations.actito.presets import qualifio_mapping
from etl.transform.mapping import Mapping, explicit_mapping
from etl.config import Config, ImportActivationBase, OpenFieldDestination, ProfilesActivation
from etl.runtime.runs import RunContext

KIND = "profiles"


def by_name(
    activation: ImportActivationBase, key: str, subscriptions: dict[str, str], extra: Sequence[str] = ()
) -> MappingFactory:
    """Explicit ``attributes`` if given, else every column named like an attribute of the table."""

    def build(columns: Sequence[str], table: Table) -> Mapping:
        attributes = dict(activation.attributes) or {
            column: column for column in columns if column not in subscriptions
        }
        attributes.update({column: column for column in extra})
        rules = {attribute.name: rule_for(attribute) for attribute in table.attributes}
        return explicit_mapping(key, attributes, subscriptions, rules)

    return build


def plan(config: Config, name: str) -> ImportPlan:
    activation = config.activation_of(name, ProfilesActivation)
    mapping_for: MappingFactory = (
        (lambda columns, table: qualifio_mapping(columns, key=activation.key))
        if activation.preset == "qualifio"
        else by_name(activation, activation.key, activation.subscriptions)
    )
    target = target_for(config, name, custom=False, mode=activation.mode)
    return ImportPlan(activation.destination, target, mapping_for)


def run(context: RunContext) -> None:
    """Into an Actito profile table by bulk imports, or into OpenField profile by profile."""
    activation = context.config.activation_of(context.activation, ProfilesActivation)
    if isinstance(context.config.destinations[activation.destination], OpenFieldDestination):
        from etl.destinations.openfield import sync  # loaded only when an OpenField destination is used

        sync.run(context)
        return
    run_plan(context, plan(context.config, context.activation))
