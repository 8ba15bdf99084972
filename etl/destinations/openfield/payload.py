"""Warehouse rows → OpenField profile payloads, in the formats of Qualifio's OpenField integration.

Values are checked by etl.values' rules first, then converted here. What OpenField cannot take is
rejected, never guessed (a civility ``Dr``, a country name); so is an opt-in without a participation
time, whose consent time is unknown. A column named like "password" is dropped before any value is
read: passwords are never synced. Any other unknown column is an error, as for the Qualifio preset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import MappingError
from etl.transform.mapping import (MAX_STRING, QUALIFIO_OPTIN_PREFIX, SUBSCRIPTION_PREFIX, ColumnUse, FieldMap,
                                   OnInvalid, Problems, RowMapper, SubscriptionMap, qualifio_subscription_name,
                                   rows_rejected_later, sort_columns, with_policy)
from etl.transform.mapping import Mapping as RowMapping
from etl.values.countries import alpha3_of_alpha2
from etl.values.rules import FieldRule
from etl.values.text import STRING, concat, nulls

log = logging.getLogger("audience_sync.openfield")

#: Qualifio variable (lower case) → (OpenField field, rule of etl.values.rules)
FIELDS: dict[str, tuple[str, FieldRule]] = {
    "email": ("Email", "email"),
    "username": ("UserName", "string"),
    "firstname": ("FirstName", "string"),
    "lastname": ("LastName", "string"),
    "country": ("Country", "string"),
    "locality": ("Locality", "string"),
    "zipcode": ("ZipCode", "string"),
    "zip": ("ZipCode", "string"),
    "address": ("Address", "string"),
    "number": ("AddressNumber", "string"),
    "gender": ("Gender", "string"),
    "civility": ("Civility", "string"),
    "birthday": ("BirthDate", "date"),
    "language": ("LanguageId", "language"),
    "participated_at": ("ActivationDate", "datetime"),
    "participation_date": ("ActivationDate", "datetime"),
}
#: a value check and conversion: (text as its rule wrote it) -> (value for OpenField, why not)
_Conversion = Callable[[pa.Array], tuple[pa.Array, pa.Array]]
SERVICE_TYPE = "OPTINS"
#: fields that are not sent as they are: folded into Party, Address or Services
_NOT_PROFILE_FIELDS = frozenset({"AddressNumber", "LanguageId", "ActivationDate"})

GENDERS: dict[str, str] = {"H": "H", "M": "H", "MALE": "H", "MAN": "H", "HOMME": "H",
                           "F": "F", "FEMALE": "F", "WOMAN": "F", "FEMME": "F"}
CIVILITIES: dict[str, str] = {"M": "M", "MR": "M", "MR.": "M", "MONSIEUR": "M",
                              "MME": "MME", "MME.": "MME", "MRS": "MME", "MRS.": "MME", "MADAME": "MME"}


@dataclass(frozen=True)
class Profile:
    """One profile to send: its source row, its key value (what `find` looks for) and its payload."""

    row: int
    key: str
    payload: dict[str, object]


@dataclass(frozen=True)
class PayloadBatch:
    profiles: list[Profile]
    #: etl.transform.mapping.REJECTS_SCHEMA: one line per invalid value, the row rejected or the value dropped
    rejects: pa.Table


class PayloadBuilder:
    """Builds the payloads of one query's chunks (stateful: numbers source rows across chunks)."""

    def __init__(
        self,
        columns: Sequence[str],
        *,
        match_on: str,
        party_version: int,
        language: str,
        services: Mapping[str, str] | None = None,
        on_invalid: tuple[Mapping[str, OnInvalid], OnInvalid] = ({}, "drop_value"),
        where: str = "",
    ) -> None:
        """``services``: source column → ServiceId, beside ``optin_<name>`` (ServiceId ``<Name>``, as in Qualifio);
        ``on_invalid``: the policy per named column, and of the others."""
        self.match_on = match_on
        self.party_version = party_version
        self.language = language.lower()
        self.dropped = [column for column in columns if "password" in column.lower()]
        for column in self.dropped:
            log.warning("%s: column %r is not sent: passwords are never synced to OpenField "
                        "(leave it out of the SELECT to silence this)", where, column)
        self._mapping = with_policy(_row_mapping([c for c in columns if c not in self.dropped], match_on,
                                                 dict(services or {})), *on_invalid)
        self._mapper = RowMapper(self._mapping, where=where)
        self._source = {field.target: field.source for field in self._mapping.fields}
        self._policy = {**{field.target: field.policy for field in self._mapping.fields},
                        **{s.column: s.on_invalid or "drop_value" for s in self._mapping.subscriptions}}
        self._services = [(s.column, s.source, s.subscription) for s in self._mapping.subscriptions]

    @property
    def mapping(self) -> RowMapping:
        """Which column feeds which field before the conversions to OpenField's formats."""
        return self._mapping

    def fingerprint_parts(self) -> list[object]:
        """What changes every payload when it changes (so the delta snapshot starts over)."""
        return [self._mapping, self.match_on, self.party_version, self.language]

    def build(self, batch: pa.RecordBatch) -> PayloadBatch:
        """Map, then convert to OpenField's formats; a value OpenField cannot take follows its column's policy."""
        mapped = self._mapper.map(batch)
        rows = mapped.rows
        converted = {name: rows.column(name).combine_chunks() for name in rows.column_names}
        problems = Problems(rows.num_rows)
        for target, check in _CONVERSIONS.items():
            if target not in converted:
                continue
            written, why = check(converted[target])
            at = problems.add(self._source[target], rows.column(target).combine_chunks(), why, self._policy[target])
            converted[target] = _emptied(written, at)
        self._undated_optins(converted, problems)
        keep = pa.array(~problems.rejected)
        numbers = mapped.source_rows.to_numpy(zero_copy_only=False)
        rejects = pa.concat_tables([rows_rejected_later(mapped.rejects, numbers[problems.rejected]),
                                    problems.table(numbers)])
        profiles = list(self._profiles({k: v.filter(keep) for k, v in converted.items()},
                                       mapped.source_rows.filter(keep), int(keep.true_count)))
        return PayloadBatch(profiles, rejects.sort_by("row"))

    def _undated_optins(self, converted: dict[str, pa.Array], problems: Problems) -> None:
        """An opt-in given without a participation time: OpenField needs the consent's time."""
        if not self._services:
            return
        when = converted["ActivationDate"]
        for column, source, _ in self._services:
            given = pc.fill_null(pc.equal(converted[column], "Y"), False)
            undated = pc.and_(given, pc.is_null(when))
            why = pc.if_else(undated, f"given, but {self._source['ActivationDate']} is empty: "
                                      "OpenField needs the consent time (ActivationDate)", pa.scalar(None, STRING))
            at = problems.add(source, converted[column], why, self._policy[column])
            converted[column] = _emptied(converted[column], at)

    def _profiles(self, columns: dict[str, pa.Array], source_rows: pa.Array, count: int) -> Iterator[Profile]:
        values = {name: array.to_pylist() for name, array in columns.items()}
        numbers = source_rows.to_pylist()
        for i in range(count):
            row = {name: column[i] for name, column in values.items()}
            yield Profile(numbers[i], str(row[self.match_on]), self._payload(row))

    def _payload(self, row: dict[str, str | None]) -> dict[str, object]:
        payload: dict[str, object] = {
            "Party": {"PartyType": "Person", "Version": self.party_version,
                      "LanguageId": (row.get("LanguageId") or self.language).lower()},
        }
        for name, value in row.items():
            if value is not None and name not in _NOT_PROFILE_FIELDS and not name.startswith(SUBSCRIPTION_PREFIX):
                payload[name] = value
        if row.get("Address") and row.get("AddressNumber"):
            payload["Address"] = f"{row['Address']} {row['AddressNumber']}"
        services = [
            {"ActivationDate": row["ActivationDate"], "ServiceId": service, "ServiceStatus": True,
             "ServiceTypeId": SERVICE_TYPE}
            for column, _, service in self._services if row.get(column) == "Y"
        ]
        if services:
            payload["Services"] = services
        return payload


def _emptied(values: pa.Array, at: np.ndarray) -> pa.Array:
    """``values`` with the positions ``at`` empty (invalid values are never sent)."""
    if not len(at):
        return values
    mask = np.zeros(len(values), bool)
    mask[at] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, values.type), values)


def payload_text(payload: Mapping[str, object]) -> str:
    """The payload as sent: compact JSON, keys in their order (also what the delta snapshot hashes)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _row_mapping(columns: Sequence[str], match_on: str, services: dict[str, str]) -> RowMapping:
    """Which column feeds which field, checked before any row is read (every problem at once)."""

    def use(column: str) -> ColumnUse:
        lower = column.lower()
        if column in services:
            return SubscriptionMap(column, services[column])
        if lower.startswith(QUALIFIO_OPTIN_PREFIX) and qualifio_subscription_name(column):
            return SubscriptionMap(column, qualifio_subscription_name(column))
        if lower in FIELDS:
            target, rule = FIELDS[lower]
            return FieldMap(column, target, rule, MAX_STRING, required=target == match_on)
        return None

    fields, subscriptions, unknown, problems = sort_columns(columns, use)
    if unknown:
        problems.append(
            f"{', '.join(map(repr, unknown))}: not a field of the OpenField profile (known: "
            f"{', '.join(FIELDS)}, optin_<name>, or a column listed in the activation's subscriptions)"
        )
    if missing := [source for source in services if source not in columns]:
        problems.append(f"subscriptions name {', '.join(map(repr, missing))}, which the query does not return")
    targets = {field.target for field in fields}
    if match_on not in targets:
        wanted = next(name for name, (target, _) in FIELDS.items() if target == match_on)
        problems.append(f"the profiles are matched on {match_on} (match_on) but the query has no {wanted!r} column")
    if subscriptions and "ActivationDate" not in targets:
        problems.append("opt-in columns need the participation time: add participated_at (or participation_date)")
    if problems:
        raise MappingError(problems, hint="alias the SQL columns to Qualifio's variable names, or remove them")
    return RowMapping(key=match_on, fields=tuple(fields), subscriptions=tuple(subscriptions))



def _from_words(words: Mapping[str, str], what: str) -> _Conversion:
    keys, targets = pa.array(list(words), STRING), pa.array(list(words.values()), STRING)

    def convert(text: pa.Array) -> tuple[pa.Array, pa.Array]:
        position = pc.index_in(pc.utf8_upper(text), value_set=keys)
        bad = pc.and_(pc.is_valid(text), pc.is_null(position))
        return pc.take(targets, position), _why(bad, text, what)

    return convert


def _country(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    table = alpha3_of_alpha2()
    code = pc.utf8_upper(text)
    alpha2s, alpha3s = pa.array(list(table), STRING), pa.array(list(table.values()), STRING)
    alpha3 = pc.fill_null(pc.is_in(code, value_set=alpha3s), False)
    written = pc.if_else(alpha3, code, pc.take(alpha3s, pc.index_in(code, value_set=alpha2s)))
    bad = pc.and_(pc.is_valid(text), pc.is_null(written))
    hint = pc.if_else(pc.equal(code, "UK"), " (the United Kingdom is GB or GBR)",
                      pc.if_else(pc.equal(code, "EL"), " (Greece is GR or GRC)", ""))
    return written, _why(bad, text, "an ISO 3166-1 country code (alpha-2 BE or alpha-3 BEL)", hint)


def _always(convert: Callable[[pa.Array], pa.Array]) -> _Conversion:
    """A conversion of values their rule already checked: it cannot fail."""
    return lambda text: (convert(text), nulls(len(text)))


def _birthday(text: pa.Array) -> pa.Array:
    """``yyyy-MM-dd`` (as the date rule wrote it) → ``DDMMYYYY``."""
    return concat(*(pc.utf8_slice_codeunits(text, a, b) for a, b in ((8, 10), (5, 7), (0, 4))))


def _activation_date(text: pa.Array) -> pa.Array:
    """``yyyy-MM-dd HH:mm:ss`` (as the date-time rule wrote it) → ``yyyy-MM-ddTHH:mm:ss``."""
    return pc.replace_substring(text, " ", "T", max_replacements=1)


def _why(bad: pa.Array, text: pa.Array, what: str, hint: pa.Array | str = "") -> pa.Array:
    reasons = concat("'", text, f"' is not {what}", hint)
    return pc.if_else(pc.fill_null(bad, False), reasons, pa.scalar(None, STRING))


#: OpenField field → its conversion from the string its rule wrote (in this order)
_CONVERSIONS: dict[str, _Conversion] = {
    "Country": _country,
    "Gender": _from_words(GENDERS, "a gender OpenField takes (H or F; M, male, female, homme, femme are read)"),
    "Civility": _from_words(CIVILITIES, "a civility OpenField takes (M or MME; Mr, Mrs, Monsieur, Madame are read)"),
    "BirthDate": _always(_birthday),
    "ActivationDate": _always(_activation_date),
    "LanguageId": _always(pc.utf8_lower),
}
