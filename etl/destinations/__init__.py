"""Which destination an activation has, picked once; a vendor's package is imported only when needed."""

from __future__ import annotations

from etl.config import AudienceActivation, Config, Destination, OpenFieldDestination
from etl.destinations.base import AudienceDestination, Retirement, RowDestination, Target


def open_rows(config: Config, name: str) -> RowDestination:
    """The destination of an import activation (profiles, subscriptions, interactions)."""
    destination = config.destinations[config.activations[name].destination]
    if isinstance(destination, OpenFieldDestination):
        from etl.destinations.openfield.sync import OpenFieldProfiles

        return OpenFieldProfiles(config, name)
    from etl.destinations.actito.imports import ActitoImports

    return ActitoImports(config, name)


def open_audience(config: Config, name: str) -> AudienceDestination:
    """The destination of an audience activation: a file at its location, or members in an Actito table."""
    activation = config.activation_of(name, AudienceActivation)
    config.destination_of(activation.destination, Destination)  # validated: audiences go to Actito
    if activation.delivery == "membership":
        from etl.destinations.actito.membership import ActitoMembership

        return ActitoMembership(config, name)
    from etl.destinations.filedrop.factory import FileDrop

    return FileDrop(config, name)


def open_retirement(config: Config, name: str, target: Target) -> Retirement:
    """What a retired activation left at a target it delivered to; ``name`` may have left the configuration."""
    if target.kind == "membership":
        from etl.destinations.actito.retire import MembershipRetirement

        return MembershipRetirement(config, name, target)
    from etl.destinations.filedrop.retire import FilesRetirement

    return FilesRetirement(config, name, target)
