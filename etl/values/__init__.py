"""Vendor-neutral value rules shared by every stage and destination, so one value gets one verdict
wherever it goes. The reference lists ship in etl/values/data and are never fetched at run time, so
a run gives the same verdicts offline as online."""

from __future__ import annotations

import importlib.resources

import pyarrow as pa


def reference_text(name: str, encoding: str = "utf-8") -> str:
    return importlib.resources.files("etl.values").joinpath("data", name).read_text(encoding=encoding)


def reference_rows(name: str) -> list[list[str]]:
    """The tab-separated rows of a list, its ``#`` comment lines left out."""
    return [line.split("\t") for line in reference_text(name).splitlines() if line and not line.startswith("#")]


def code_list(name: str) -> pa.Array:
    codes = {row[0].strip().upper() for row in reference_rows(name)}
    return pa.array(sorted(code for code in codes if code), pa.string())
