"""What Actito accepts, written from docs/actito-wire.md and not shared with the client: the client is
what these rules test."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from etl.testing.actito.model import Attr, CustomTable, Definition, Entity, ProfileTable
from etl.testing.actito.wire import HttpError

#: attributes Actito sets itself: a profile import cannot write them
TECHNICAL = frozenset({"profileId", "creationMoment", "updateMoment"})
#: the entries of an import definition's dataCollection (V4's dataCollectionInformation, plus updateSource)
DATA_COLLECTION = ("source", "updateSource", "way", "date")
#: how the text of a file is decoded, by the definition's ``format.encoding``
ENCODINGS = {"UTF-8": "utf-8", "ISO-8859-1": "iso-8859-1"}
#: a subscription's or a boolean's accepted spellings
YES_NO = {"Y": True, "N": False, "TRUE": True, "FALSE": False, "1": True, "0": False}

_MODES = ("CREATE_UPDATE", "UPDATE_ONLY", "CREATE_ONLY", "DELETE")
_SEPARATORS = (",", ";", "\t")
_COMPRESSIONS = ("NONE", "GZIP", "ZIP")
_MAX_STRING = 255

#: validation rule of each predefined attribute type, then of each custom ``valueType``
PREDEFINED_RULES = {"EMAIL_ADDRESS": "email", "FIRSTNAME": "string", "LASTNAME": "string", "SEX": "sex",
                    "BIRTHDATE": "date", "PHONE_NUMBER": "phone", "ADDRESS_COUNTRY": "country",
                    "MOTHER_LANGUAGE": "language", "TITLE": "title"}
VALUE_TYPE_RULES = {"STRING": "string", "INTEGER": "integer", "DECIMAL": "decimal", "BOOLEAN": "boolean",
                    "DATE": "date", "TIMESTAMP": "timestamp"}

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SUFFIX = re.compile(r"[A-Za-z]{2,}")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_INT64 = 2**63


def convert(attribute: Attr, text: str) -> tuple[Any, str | None]:
    """The stored value for one non-empty cell, or the reason the line is rejected."""
    if len(text) > _MAX_STRING:
        return None, f"longer than {_MAX_STRING} characters"
    if attribute.max_length is not None and len(text) > attribute.max_length:
        return None, f"longer than {attribute.max_length} characters (maxLength of {attribute.name})"
    rule = attribute.rule
    if rule == "integer":
        if _INTEGER.fullmatch(text) and -_INT64 <= int(text) < _INT64:
            return int(text), None
        return None, "not an integer"
    if rule == "decimal":
        return (float(text), None) if _DECIMAL.fullmatch(text) else (None, "not a decimal number (decimal point '.')")
    if rule == "boolean":
        flag = YES_NO.get(text.upper())
        return (flag, None) if flag is not None else (None, "not a boolean (TRUE/FALSE, Y/N, 1/0)")
    valid, reason = _TEXT_RULES[rule]
    return (text, None) if valid(text) else (None, reason)


def _valid_email(text: str) -> bool:
    """Actito's shape. Whether the suffix is a real TLD is not checked: the client rejects unknown TLDs
    before a file is written."""
    local, at, domain = text.partition("@")
    if not at or not local or "@" in domain or ".." in local:
        return False
    if _EMAIL_LOCAL.fullmatch(local) is None:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or any(_DOMAIN_LABEL.fullmatch(label) is None for label in labels):
        return False
    return _SUFFIX.fullmatch(labels[-1]) is not None


def _valid_date(text: str) -> bool:
    return _DATE.fullmatch(text) is not None and _parses(date.fromisoformat, text)


def _valid_timestamp(text: str) -> bool:
    return _TIMESTAMP.fullmatch(text) is not None and _parses(_timestamp, text)


def _timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def _parses(parse: Callable[[str], object], text: str) -> bool:
    """Whether ``text``, already of the right shape, names a day or moment that exists."""
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _matches(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda text: compiled.fullmatch(text) is not None


#: each rule whose values are stored as text: the test a value must pass, and why one that fails is rejected
_TEXT_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "string": (lambda text: True, ""),
    "email": (_valid_email, "invalid e-mail address"),
    "sex": (lambda text: text in ("M", "F"), "sex must be M or F"),
    "title": (lambda text: text in ("Mr", "Mrs", "Ms"), "title must be Mr, Mrs or Ms"),
    "phone": (_matches(r"\+[0-9]{8,15}"), "not an international phone number (+ and 8 to 15 digits)"),
    "country": (_matches(r"[A-Z]{2}"), "not an ISO 3166-1 alpha-2 country code"),
    "language": (_matches(r"[A-Za-z]{2}"), "not an ISO 639-1 language code"),
    "date": (_valid_date, "not a date (yyyy-MM-dd)"),
    "timestamp": (_valid_timestamp, "not a date-time (yyyy-MM-dd HH:mm:ss)"),
}


class _Problems:
    """The problems of one definition, in the order found: all are listed in one 400."""

    def __init__(self) -> None:
        self.found: list[dict[str, str]] = []

    def add(self, field_name: str, message: str) -> None:
        self.found.append({"field": field_name, "message": message})


def parse_definition(raw: Any, entity: Entity) -> Definition:
    """Validate an import definition against the entity's tables: 400 listing every problem (404 for
    an unknown target table), so a wrong definition is refused before an execution exists."""
    if not isinstance(raw, Mapping):
        raise HttpError(400, "the definition must be a JSON object")
    problems = _Problems()
    custom, table = _target(raw, entity, problems)
    mode = raw.get("mode")
    if mode not in _MODES:
        problems.add("mode", f"must be one of {', '.join(_MODES)}")
    separator, encoding, compression = _file_format(raw, problems)
    empty_values = str(raw.get("emptyValues", "KEEP")).upper()
    if empty_values not in ("KEEP", "CLEAR"):
        problems.add("emptyValues", "must be KEEP or CLEAR")
    attributes = _attribute_columns(raw, table, custom, problems)
    subscriptions = _subscription_columns(raw, table, custom, attributes, problems)
    key_column, key_attribute = _key(raw, table, attributes, problems)
    collection = _data_collection(raw, problems)
    recipients = _report_recipients(raw, problems)
    if problems.found:
        listing = "; ".join(f"{p['field']}: {p['message']}" for p in problems.found)
        raise HttpError(400, f"invalid definition: {listing}", problems.found)
    assert table is not None
    return Definition(custom=custom, table=table.id, mode=str(mode), key_column=str(key_column),
                      key_attribute=key_attribute, separator=str(separator), encoding=encoding,
                      compression=compression, empty_values=empty_values, attributes=attributes,
                      subscriptions=subscriptions, data_collection=collection, report_recipients=recipients)


def _target(raw: Mapping[str, Any], entity: Entity, problems: _Problems
            ) -> tuple[bool, ProfileTable | CustomTable | None]:
    """Whether the target is a custom table, and the table (None when the target is malformed)."""
    target = raw.get("target")
    target_type = target.get("type") if isinstance(target, Mapping) else None
    table_id = target.get("id") if isinstance(target, Mapping) else None
    if target_type not in ("PROFILE_TABLE", "CUSTOM_TABLE"):
        problems.add("target.type", "must be PROFILE_TABLE or CUSTOM_TABLE")
    if not isinstance(table_id, str) or not table_id:
        problems.add("target.id", "must be the table id")
    custom = target_type == "CUSTOM_TABLE"
    if problems.found:
        return custom, None
    table = entity.custom_tables.get(str(table_id)) if custom else entity.profile_tables.get(str(table_id))
    if table is None:
        kind = "custom" if custom else "profile"
        raise HttpError(404, f"{kind} table {table_id!r} not found in entity {entity.name!r}",
                        [{"field": "target.id", "message": "unknown table"}])
    return custom, table


def _file_format(raw: Mapping[str, Any], problems: _Problems) -> tuple[Any, str, str]:
    fmt = raw.get("format", {})
    if not isinstance(fmt, Mapping):
        problems.add("format", "must be an object")
        fmt = {}
    separator = fmt.get("separator", ",")
    if separator not in _SEPARATORS:
        problems.add("format.separator", "must be ',', ';' or a tab")
    encoding = str(fmt.get("encoding", "UTF-8")).upper()
    if encoding not in ENCODINGS:
        problems.add("format.encoding", "must be UTF-8 or ISO-8859-1")
    compression = str(fmt.get("compression", "NONE")).upper()
    if compression not in _COMPRESSIONS:
        problems.add("format.compression", "must be NONE, GZIP or ZIP")
    return separator, encoding, compression


def _pair(item: Any, second: str) -> tuple[Any, Any]:
    """``item``'s ``column`` and its ``second`` (each None when ``item`` is not an object)."""
    if not isinstance(item, Mapping):
        return None, None
    return item.get("column"), item.get(second)


def _attribute_columns(raw: Mapping[str, Any], table: ProfileTable | CustomTable | None, custom: bool,
                       problems: _Problems) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for i, item in enumerate(raw.get("attributes") or []):
        column, attribute = _pair(item, "attribute")
        where = f"attributes[{i}]"
        if not isinstance(column, str) or not isinstance(attribute, str) or not column or not attribute:
            problems.add(where, "must be {\"column\": ..., \"attribute\": ...}")
        elif column in attributes:
            problems.add(where, f"column {column!r} mapped twice")
        elif table is not None and attribute not in table.attributes:
            problems.add(where, f"table {table.id!r} has no attribute {attribute!r}")
        elif attribute in TECHNICAL and not custom:
            problems.add(where, f"{attribute} is technical, set by Actito")
        else:
            attributes[column] = attribute
    return attributes


def _subscription_columns(raw: Mapping[str, Any], table: ProfileTable | CustomTable | None, custom: bool,
                          attributes: Mapping[str, str], problems: _Problems) -> dict[str, str]:
    subscriptions: dict[str, str] = {}
    for i, item in enumerate(raw.get("subscriptions") or []):
        column, name = _pair(item, "subscription")
        where = f"subscriptions[{i}]"
        if custom:
            problems.add("subscriptions", "a custom table has no subscriptions")
            break
        if not isinstance(column, str) or not isinstance(name, str) or not column or not name:
            problems.add(where, "must be {\"column\": ..., \"subscription\": ...}")
        elif column in subscriptions or column in attributes:
            problems.add(where, f"column {column!r} mapped twice")
        elif isinstance(table, ProfileTable) and name not in table.subscriptions:
            problems.add(where, f"table {table.id!r} has no subscription {name!r}")
        else:
            subscriptions[column] = name
    return subscriptions


def _key(raw: Mapping[str, Any], table: ProfileTable | CustomTable | None, attributes: Mapping[str, str],
         problems: _Problems) -> tuple[Any, str]:
    """The key column and the attribute it holds: a custom table's primary key, a profile table's unique one."""
    key_column = raw.get("keyColumn")
    if not isinstance(key_column, str) or not key_column:
        problems.add("keyColumn", "must name the CSV column holding the key")
        return key_column, ""
    if table is None:
        return key_column, ""
    key_attribute = attributes.get(key_column, key_column)
    if isinstance(table, CustomTable):
        if key_attribute != table.primary_key:
            problems.add("keyColumn", f"must hold the table's primary key {table.primary_key!r}")
        return key_column, key_attribute
    key_attr = table.attributes.get(key_attribute)
    if key_attr is None or not key_attr.unique:
        unique = ", ".join(a.name for a in table.attributes.values() if a.unique)
        problems.add("keyColumn", f"must hold a unique attribute of table {table.id!r} ({unique})")
    return key_column, key_attribute


def _report_recipients(raw: Mapping[str, Any], problems: _Problems) -> list[str]:
    """``reportRecipients`` [guess]: a list of 1 to 10 e-mail addresses Actito mails the import's report to."""
    recipients = raw.get("reportRecipients")
    if recipients is None:
        return []
    if not isinstance(recipients, list) or not 0 < len(recipients) <= 10:
        problems.add("reportRecipients", "must be a list of 1 to 10 e-mail addresses")
        return []
    bad = [r for r in recipients if not isinstance(r, str) or not _valid_email(r)]
    for address in bad:
        problems.add("reportRecipients", f"{address!r} is not an e-mail address")
    return [] if bad else list(recipients)


def _data_collection(raw: Mapping[str, Any], problems: _Problems) -> dict[str, Any]:
    """``source``, ``updateSource``, ``way`` (texts up to 255 characters) and ``date``; nothing else."""
    collection = raw.get("dataCollection") or {}
    if not isinstance(collection, Mapping):
        problems.add("dataCollection", "must be an object")
        collection = {}
    for name, value in collection.items():
        if name not in DATA_COLLECTION:
            problems.add(f"dataCollection.{name}", f"unknown entry (known: {', '.join(DATA_COLLECTION)})")
        elif name != "date" and (not isinstance(value, str) or not 0 < len(value) <= 255):
            problems.add(f"dataCollection.{name}", "must be a text of 1 to 255 characters")
    moment = collection.get("date")
    if moment is not None and (not isinstance(moment, str) or not _valid_timestamp(moment)):
        problems.add("dataCollection.date", "must be yyyy-MM-dd HH:mm:ss")
    return dict(collection)
