"""Presets: the column conventions of Actito's partners' integrations (Qualifio, Didomi) as mappings.

A preset maps only the columns present, and a column it does not know is an error listing every
such column, never silently dropped: a column in the SELECT is data someone expects in Actito."""

from __future__ import annotations

import collections.abc as cabc
from collections.abc import Sequence
from types import MappingProxyType

from etl.errors import MappingError
from etl.transform.mapping import (MAX_STRING, QUALIFIO_OPTIN_PREFIX, ColumnUse, FieldMap, Mapping,
                                   SubscriptionMap, qualifio_subscription_name, rule_of, sort_columns,
                                   subscription_maps)
from etl.values.rules import FieldRule
from etl.values.text import listing

_NO_RULES: cabc.Mapping[str, FieldRule] = MappingProxyType({})

#: Qualifio's variable → (Actito attribute, rule, max length), from Qualifio's integration page
QUALIFIO_FIELDS: dict[str, tuple[str, FieldRule, int | None]] = {
    "firstname": ("firstName", "name", 64),  # "no special characters": etl/values/people.py
    "lastname": ("lastName", "name", 64),
    "email": ("emailAddress", "email", MAX_STRING),
    "address": ("addressStreet", "string", 225),
    "number": ("addressNumber", "string", 10),
    "box": ("addressBox", "string", 10),
    "zip": ("addressPostalCode", "string", 10),
    "locality": ("addressLocality", "string", 50),
    "country": ("addressCountry", "country", MAX_STRING),
    "birthday": ("birthDate", "date", MAX_STRING),
    "gender": ("sex", "sex", MAX_STRING),
    "function": ("profession", "string", MAX_STRING),
    "phone": ("telephoneNumber", "phone", MAX_STRING),
    "company": ("company", "string", MAX_STRING),
}
QUALIFIO_CUSTOM_PREFIX = "actito_"


def qualifio_mapping(
    columns: Sequence[str], *, key: str = "emailAddress", rules: cabc.Mapping[str, FieldRule] = _NO_RULES,
    incomplete_participations: bool = False,
) -> Mapping:
    """Qualifio's variable names → Actito, as Qualifio's own integration maps them.

    ``actito_<name>`` → custom attribute ``<name>`` (``string`` unless ``rules`` says otherwise);
    ``optin_<name>`` → subscription. An unknown column is an error, so a typo never hides as an empty attribute.
    The campaign fields ``source``, ``updateSource``, ``way`` and ``date`` are no attributes of a profile:
    they say how it was collected, Actito's dataCollection of the import (see collection.py).
    """
    completed, columns = _completion(columns)
    collected = [_campaign_field(column) for column in columns if column.lower() in _COLLECTION_BY_LOWER]
    fields, subscriptions, unknown, problems = sort_columns(
        [column for column in columns if column.lower() not in _COLLECTION_BY_LOWER],
        lambda column: _qualifio_use(column, key, rules))
    if unknown:
        problems.append(
            f"{listing(unknown)} {'is not a Qualifio variable' if len(unknown) == 1 else 'are not Qualifio variables'}"
            " "
            f"(known: {', '.join([*QUALIFIO_FIELDS, *QUALIFIO_COLLECTION])}, actito_<name>, optin_<name>)"
        )
    if key not in {f.target for f in fields}:
        source = next((v for v, (t, _, _) in QUALIFIO_FIELDS.items() if t == key), QUALIFIO_CUSTOM_PREFIX + key)
        problems.append(f"the key {key!r} has no column: select the Qualifio variable {source!r}")
    if problems:
        raise MappingError(
            problems,
            hint="rename a column actito_<name> to send it as the attribute <name>, optin_<name> for the "
            "subscription <Name>, or remove it from the SELECT",
        )
    return Mapping(key=key, fields=tuple(fields), subscriptions=tuple(subscriptions), collected=tuple(collected),
                   send_only_if=None if incomplete_participations else completed)


#: the column saying whether a participation went to the end of the campaign (yes/no); never sent
QUALIFIO_COMPLETED = "completed"


def _completion(columns: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the completion column if the query has one, the other columns). Qualifio's integration pushes
    incomplete participations only when told to (``incomplete_participations``): without the column,
    the query's rows are taken as what should be pushed."""
    found = next((column for column in columns if column.lower() == QUALIFIO_COMPLETED), None)
    return found, [column for column in columns if column != found]


def _campaign_field(column: str) -> FieldMap:
    name = _COLLECTION_BY_LOWER[column.lower()]
    rule, length = QUALIFIO_INTERACTION_FIELDS[name]
    return FieldMap(column, name, rule, length)


def _qualifio_use(column: str, key: str, rules: cabc.Mapping[str, FieldRule]) -> ColumnUse:
    lower = column.lower()
    if lower in QUALIFIO_FIELDS:
        target, rule, length = QUALIFIO_FIELDS[lower]
        return FieldMap(column, target, rule, length, required=target == key)
    if lower.startswith(QUALIFIO_CUSTOM_PREFIX):
        target = column[len(QUALIFIO_CUSTOM_PREFIX):]
        if not target:
            return f"column {column!r}: no attribute name after {QUALIFIO_CUSTOM_PREFIX!r}"
        return FieldMap(column, target, rule_of(target, rules), MAX_STRING, required=target == key)
    if lower.startswith(QUALIFIO_OPTIN_PREFIX):
        name = qualifio_subscription_name(column)
        if not name:
            return f"column {column!r}: no subscription name after {QUALIFIO_OPTIN_PREFIX!r}"
        return SubscriptionMap(column, name)
    return None


#: the column Didomi matches users on
DIDOMI_USER_ID = "organization_user_id"
#: the column holding Didomi's user ``metadata`` object as JSON, if the query keeps it whole
DIDOMI_METADATA = "metadata"
#: attributes no import writes: set by Actito
_NOT_IMPORTED = frozenset({"profileId", "creationMoment", "updateMoment"})


def didomi_mapping(
    columns: Sequence[str],
    *,
    user_key: str,
    subscriptions: cabc.Mapping[str, str],
    metadata_columns: Sequence[str] = (),
    table_attributes: Sequence[str] | None = None,
) -> Mapping:
    """Consents as Didomi's integration sends them: the user's key, its subscriptions, and every
    property of the user's metadata as a profile attribute.

    The metadata is each other column of the query, or the properties of a JSON column ``metadata``.
    Like Didomi, a property is sent to the attribute of its name (case aside: warehouses fold unquoted
    aliases) when ``table_attributes`` has one; the others are ``ignored`` and listed, never invented.
    A column named in ``metadata_columns`` is meant: it goes to its attribute or fails the pre-flight.
    """
    key_column = next((column for name in (DIDOMI_USER_ID, user_key) for column in columns
                       if column.lower() == name.lower()), None)
    problems = [f"column {source!r} is not in the query (columns: {listing(list(columns)) or 'none'})"
                for source in [*subscriptions, *metadata_columns] if source not in columns]
    if key_column is None:
        problems.insert(0, f"no column for the user key: expected {DIDOMI_USER_ID!r} (Didomi's) or {user_key!r} "
                           f"(columns: {listing(list(columns)) or 'none'})")
    if problems:
        raise MappingError(problems)
    assert key_column is not None
    attributes = {name.lower(): name for name in (table_attributes or ()) if name not in _NOT_IMPORTED}
    json_column = next((column for column in columns if column.lower() == DIDOMI_METADATA
                        and column not in (key_column, *subscriptions, *metadata_columns)), None)
    extra = [column for column in columns if column not in (key_column, json_column, *subscriptions)]
    fields = [FieldMap(key_column, user_key, rule_of(user_key), required=True)]
    fields += [FieldMap(column, attributes.get(column.lower(), column), "string") for column in extra
               if column in metadata_columns or column.lower() in attributes]
    if json_column is not None:
        fed = {field.target for field in fields}
        fields += [FieldMap(f"{json_column}.{name}", name, "string") for name in attributes.values() if name not in fed]
    ignored = tuple(column for column in extra if column not in {field.source for field in fields})
    return Mapping(key=user_key, fields=tuple(fields), subscriptions=subscription_maps(subscriptions),
                   json_object=json_column, ignored=ignored)


#: the campaign fields of Qualifio's integration: Actito question → (rule, max length)
QUALIFIO_INTERACTION_FIELDS: dict[str, tuple[FieldRule, int | None]] = {
    "source": ("string", MAX_STRING),
    "updateSource": ("string", MAX_STRING),
    "way": ("string", MAX_STRING),
    "date": ("datetime", None),
    "surveyName": ("string", MAX_STRING),
    "surveyType": ("integer", None),
    "surveyDate": ("date", None),
    "motherLanguage": ("language", None),
    "deviceName": ("device", None),
    "userAgent": ("string", MAX_STRING),
}
#: the campaign fields that are also Actito's dataCollection of an import, as the seed names them
QUALIFIO_COLLECTION = ("source", "updateSource", "way", "date")
_COLLECTION_BY_LOWER = {name.lower(): name for name in QUALIFIO_COLLECTION}
#: accepted names of the participation id column (the interaction's key) and of the e-mail link
QUALIFIO_PARTICIPATION_COLUMNS = ("participationId", "participation_id")
QUALIFIO_EMAIL_COLUMNS = ("emailAddress", "email", "email_address")


def qualifio_interaction_mapping(
    columns: Sequence[str], *, key: str = "participationId", email: str = "emailAddress",
    incomplete_participations: bool = False,
) -> Mapping:
    """One Qualifio participation → one record of an INTERACTIONS custom table, keyed by the participation id.

    A ``userAgent`` over Actito's 255 characters is rejected with its row, never cut, like every string.
    """
    known = {name.lower(): name for name in QUALIFIO_INTERACTION_FIELDS}
    #: the key's columns first, then the e-mail's, then the campaign fields
    rank = {**dict.fromkeys(map(str.lower, QUALIFIO_PARTICIPATION_COLUMNS), 0),
            **dict.fromkeys(map(str.lower, QUALIFIO_EMAIL_COLUMNS), 1)}

    def use(column: str) -> ColumnUse:
        lower = column.lower()
        if rank.get(lower) == 0:
            return FieldMap(column, key, "string", required=True)
        if rank.get(lower) == 1:
            return FieldMap(column, email, "email", required=True)
        if lower in known:
            rule, length = QUALIFIO_INTERACTION_FIELDS[known[lower]]
            return FieldMap(column, known[lower], rule, length)
        return None

    completed, columns = _completion(columns)
    fields, _, unknown, problems = sort_columns(columns, use)
    fields.sort(key=lambda field: rank.get(field.source.lower(), 2))
    ranks = {rank.get(field.source.lower()) for field in fields}
    if 0 not in ranks:
        problems.append(f"no participation id column (one of {listing(list(QUALIFIO_PARTICIPATION_COLUMNS))})")
    if 1 not in ranks:
        problems.append(f"no e-mail column to link the participant (one of {listing(list(QUALIFIO_EMAIL_COLUMNS))})")
    if unknown:
        problems.append(
            f"{listing(unknown)}: not a campaign field of Qualifio's integration "
            f"(known: {', '.join(QUALIFIO_INTERACTION_FIELDS)})"
        )
    if problems:
        raise MappingError(problems, hint="alias the columns in the SQL to these names, or remove them from the SELECT")
    return Mapping(key=key, fields=tuple(fields),
                   collection=tuple((f.target, f.target) for f in fields if f.target in QUALIFIO_COLLECTION),
                   send_only_if=None if incomplete_participations else completed)

