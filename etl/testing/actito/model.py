"""What an Actito entity holds, as the sandbox keeps it: tables, profiles, records, import definitions, executions."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Attr:
    """One attribute of a table, with the rule its imported values must meet (see rules.convert)."""

    name: str
    rule: str
    unique: bool
    mandatory: bool
    max_length: int | None
    #: the attribute as the fixture declares it: what the table structure routes publish
    published: dict[str, Any]


@dataclass
class Profile:
    profile_id: int
    attributes: dict[str, Any]
    subscriptions: dict[str, bool]
    created: str
    updated: str

    def view(self) -> dict[str, Any]:
        return {
            "profileId": self.profile_id,
            "attributes": dict(self.attributes),
            "subscriptions": dict(self.subscriptions),
            "creationMoment": self.created,
            "updateMoment": self.updated,
        }


@dataclass
class ProfileTable:
    id: str
    name: str
    attributes: dict[str, Attr]
    subscriptions: list[str]
    profiles: dict[int, Profile] = field(default_factory=dict)
    #: unique attribute → value → profileId, so a key lookup does not scan the table
    index: dict[str, dict[Any, int]] = field(default_factory=dict)

    def published(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "attributes": [copy.deepcopy(a.published) for a in self.attributes.values()],
            "subscriptions": [{"name": s} for s in self.subscriptions],
        }

    def find(self, attribute: str, value: Any) -> Profile | None:
        if attribute == "profileId":
            return self.profiles.get(value) if isinstance(value, int) else None
        if attribute in self.index:
            found = self.index[attribute].get(value)
            return None if found is None else self.profiles.get(found)
        return next((p for p in self.profiles.values() if p.attributes.get(attribute) == value), None)

    def store(self, profile: Profile, attributes: dict[str, Any]) -> None:
        """Set a profile's attributes (new or existing), keeping the unique indexes right."""
        for name, values in self.index.items():
            old = profile.attributes.get(name)
            if old is not None and values.get(old) == profile.profile_id:
                del values[old]
            new = attributes.get(name)
            if new is not None:
                values[new] = profile.profile_id
        profile.attributes = attributes
        self.profiles[profile.profile_id] = profile

    def delete(self, profile: Profile) -> None:
        self.store(profile, {})
        del self.profiles[profile.profile_id]

    def clear(self) -> None:
        self.profiles = {}
        self.index = {attribute: {} for attribute in self.index}


@dataclass(frozen=True)
class ForeignKey:
    attribute: str
    profile_table: str
    profile_attribute: str


@dataclass
class CustomTable:
    id: str
    name: str
    type: str
    primary_key: str
    attributes: dict[str, Attr]
    foreign_keys: list[ForeignKey]
    records: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def published(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "primaryKeyAttribute": self.primary_key,
            "attributes": [copy.deepcopy(a.published) for a in self.attributes.values()],
            "foreignKeys": [
                {"attribute": k.attribute, "profileTable": k.profile_table, "profileAttribute": k.profile_attribute}
                for k in self.foreign_keys
            ],
        }


@dataclass(frozen=True)
class Definition:
    """An import definition (one-shot or an ETL's), validated against the entity's tables."""

    custom: bool
    table: str
    mode: str
    key_column: str
    key_attribute: str
    separator: str
    encoding: str
    compression: str
    empty_values: str
    #: CSV column → attribute / subscription, as declared
    attributes: dict[str, str]
    subscriptions: dict[str, str]
    data_collection: dict[str, Any]
    #: who Actito mails the import's report to (``reportRecipients`` [guess]; none: nobody)
    report_recipients: list[str] = field(default_factory=list)

    @property
    def target_type(self) -> str:
        return "CUSTOM_TABLE" if self.custom else "PROFILE_TABLE"

    def published(self) -> dict[str, Any]:
        return {
            "target": {"type": self.target_type, "id": self.table},
            "mode": self.mode,
            "keyColumn": self.key_column,
            "format": {"separator": self.separator, "encoding": self.encoding, "compression": self.compression},
            "emptyValues": self.empty_values,
            "attributes": [{"column": c, "attribute": a} for c, a in self.attributes.items()],
            "subscriptions": [{"column": c, "subscription": s} for c, s in self.subscriptions.items()],
            "dataCollection": dict(self.data_collection),
            **({"reportRecipients": list(self.report_recipients)} if self.report_recipients else {}),
        }


@dataclass
class Execution:
    id: str
    entity: str
    reference: str | None
    definition: Definition
    etl_id: str | None
    file_name: str
    created_at: str
    #: real (monotonic) time of creation: the status progresses with processing_seconds from here
    started: float
    payload: bytes | None
    final: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None

    def status(self, now: float, processing: float) -> str:
        if self.final is not None:
            return self.final
        return "PENDING" if now - self.started < processing / 2 else "RUNNING"

    def view(self, status: str, reference_field: str = "reference") -> dict[str, Any]:
        return {
            "id": self.id,
            reference_field: self.reference,
            "status": status,
            "counts": dict(self.counts),
            "message": self.message,
            "etlId": self.etl_id,
            "target": {"type": self.definition.target_type, "id": self.definition.table},
            "mode": self.definition.mode,
            "createdAt": self.created_at,
            "fileName": self.file_name,
        }

    def details(self, status: str) -> dict[str, Any]:
        """What a test reads back: the view's facts with the per-line errors, the file name, the
        definition's dataCollection and report recipients."""
        details = self.view(status)
        target = details.pop("target")
        return {**details, "table": target["id"], "targetType": target["type"], "errors": copy.deepcopy(self.errors),
                "dataCollection": dict(self.definition.data_collection),
                "reportRecipients": list(self.definition.report_recipients)}

    def fail(self, message: str, errors: list[dict[str, Any]], counts: dict[str, int]) -> None:
        """End in ERROR: a problem with the file as a whole, nothing applied."""
        self.final = "ERROR"
        self.counts = counts
        self.errors = errors
        self.message = message


@dataclass
class Entity:
    name: str
    licence: str
    #: what the entities route lists of it: its id, name and comment
    listed: dict[str, Any]
    profile_tables: dict[str, ProfileTable]
    custom_tables: dict[str, CustomTable]
    etls: dict[str, tuple[str, Definition]]
    executions: list[Execution] = field(default_factory=list)

    def profile_table(self, table: str) -> ProfileTable:
        found = self.profile_tables.get(table)
        if found is None:
            raise KeyError(f"entity {self.name!r} has no profile table {table!r}")
        return found

    def custom_table(self, table: str) -> CustomTable:
        found = self.custom_tables.get(table)
        if found is None:
            raise KeyError(f"entity {self.name!r} has no custom table {table!r}")
        return found

    def tables_view(self) -> dict[str, Any]:
        return {
            "profileTables": {t.id: [p.view() for p in t.profiles.values()] for t in self.profile_tables.values()},
            "customTables": {t.id: [copy.deepcopy(r) for r in t.records.values()]
                             for t in self.custom_tables.values()},
        }
