"""`audience-sync actito check DESTINATION`: everything that can be verified before data is sent, reading no row."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.config import Config, Destination
from etl.destinations.actito.connect import open_client
from etl.destinations.actito.imports import import_plan, preflight
from etl.errors import ActitoError, ActitoPreflightError, AudienceSyncError, ConfigError, UsageError
from etl.extract import query_columns


@dataclass
class CheckReport:
    lines: list[tuple[bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for passed, _ in self.lines)

    def add(self, passed: bool, text: str) -> None:
        self.lines.append((passed, text))

    def text(self) -> str:
        return "\n".join(f"{'✓' if passed else '✗'} {text}" for passed, text in self.lines)


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
        names = [n for n, a in config.activations.items() if a.destination == destination and a.kind != "audience"]
        for name in names:
            plan = import_plan(config, name)
            try:
                table, mapping = preflight(client, plan.target, plan.mapping_for, query_columns(config, name))
            except ActitoPreflightError as exc:
                report.lines.extend((False, f"{name}: {problem}") for problem in exc.problems)
                continue
            except AudienceSyncError as exc:
                report.add(False, f"{name}: {exc.message()}")
                continue
            report.add(True, f"{name}: table '{table.name}', key {mapping.key}, "
                             f"{len(mapping.fields)} attributes, {len(mapping.subscriptions)} subscriptions")
    return report
