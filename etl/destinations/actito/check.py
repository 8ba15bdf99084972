"""`audience-sync actito check DESTINATION`: everything that can be verified before data is sent, reading no row."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.config import AudienceActivation, Config, Destination
from etl.destinations.actito.client import ActitoClient
from etl.destinations.actito.connect import open_client
from etl.destinations.actito.imports import import_plan, preflight, unmapped_mandatory
from etl.destinations.actito.membership import membership_preflight, membership_target
from etl.errors import ActitoError, ActitoPreflightError, AudienceSyncError, ConfigError, UsageError
from etl.extract import query_columns
from etl.transform.audience import HEADER


@dataclass
class CheckReport:
    #: (passed, text); passed None is a warning: worth reading, not a reason to fail
    lines: list[tuple[bool | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed is not False for passed, _ in self.lines)

    def add(self, passed: bool | None, text: str) -> None:
        self.lines.append((passed, text))

    def text(self) -> str:
        return "\n".join(f"{'!' if passed is None else '✓' if passed else '✗'} {text}" for passed, text in self.lines)


def check_destination(config: Config, destination: str) -> CheckReport:
    if destination not in config.destinations:
        known = ", ".join(sorted(config.destinations))
        raise ConfigError([(f"destination {destination!r}", f"not in the configuration (known: {known})")],
                          source=config.source)
    if not isinstance(config.destinations[destination], Destination):
        raise UsageError("is an OpenField destination: `actito check` checks Actito destinations only",
                         where=f"[destinations.{destination}]",
                         hint="run it on an Actito destination; an OpenField one is checked by its first run "
                              "(`audience-sync run --dry-run NAME` reads and maps its rows without sending any)")
    report = CheckReport()
    entity = config.destination_of(destination, Destination).entity
    with open_client(config, destination) as client:
        try:
            entities = [str(e.get("name")) for e in client.entities()]
        except ActitoError as exc:
            report.add(False, f"credentials: {exc.message()}")
            return report
        report.add(True, "credentials accepted")
        if entity not in entities:
            report.add(False, f"entity '{entity}' not found for this API key (it sees: {', '.join(entities) or 'none'})")
            return report
        report.add(True, f"entity '{entity}'")
        for name in config.activations:
            if destination in config.destinations_of(name):
                part_config, part = _as_delivery(config, name, destination)
                _check_activation(part_config, client, part, report)
    return report


def _as_delivery(config: Config, name: str, destination: str) -> tuple[Config, str]:
    """A fan-out is checked as each of its deliveries, which writes to one destination."""
    return config.delivery(name, destination) if len(config.destinations_of(name)) > 1 else (config, name)


def _check_activation(config: Config, client: ActitoClient, name: str, report: CheckReport) -> None:
    """Every table the activation writes: its import table, or an audience's membership table."""
    activation = config.activations[name]
    try:
        if isinstance(activation, AudienceActivation):
            if activation.delivery != "membership":
                return  # a file on the transfer location: no table of Actito's is written
            target = membership_target(config, name)
            table, mapping, _ = membership_preflight(client, target, HEADER[activation.identifier])
        else:
            plan = import_plan(config, name)
            target = plan.target
            table, mapping = preflight(client, target, plan.mapping_for, query_columns(config, name))
    except ActitoPreflightError as exc:
        report.lines.extend((False, f"{name}: {problem}") for problem in exc.problems)
        return
    except AudienceSyncError as exc:
        report.add(False, f"{name}: {exc.message()}")
        return
    report.add(True, f"{name}: table '{table.name}', key {mapping.key}, "
                     f"{len(mapping.fields)} attributes, {len(mapping.subscriptions)} subscriptions")
    for column in mapping.ignored:
        report.add(None, f"{name}: column {column} is metadata table '{table.name}' has no attribute for: "
                         "not sent (create the attribute in Actito to receive it, or remove the column)")
    for attribute in unmapped_mandatory(table, mapping, target.mode):
        report.add(False, f"{name}: attribute '{attribute}' of table '{table.name}' is mandatory but no column "
                          "feeds it: Actito refuses every row that would create a "
                          + ("record" if target.custom else "profile") + " (map a column to it)")
