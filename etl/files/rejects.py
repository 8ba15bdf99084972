"""The reject file: the rows dropped from an audience, for analysts to read in a spreadsheet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl.files.private import create_private, sync_close, write_error
from etl.files.writers import ClosingWriter

_FORMULA_START = r"^[=+\-@\t\r]"
#: a rejected value is written up to this many characters (a 1 MB cell would make every reject file huge)
MAX_REJECT_VALUE = 1000


def defuse_formulas(values: pa.Array) -> pa.Array:
    """Prefix ``'`` to values a spreadsheet would run as a formula (start = + - @ TAB CR)."""
    risky = pc.fill_null(pc.match_substring_regex(values, _FORMULA_START), False)
    if not pc.any(risky).as_py():
        return values
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


def _shortened(values: pa.Array) -> pa.Array:
    """Values beyond MAX_REJECT_VALUE characters cut there, saying how long they were."""
    lengths = pc.utf8_length(values)
    long = pc.fill_null(pc.greater(lengths, MAX_REJECT_VALUE), False)
    if not pc.any(long).as_py():
        return values
    cut = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(values, 0, MAX_REJECT_VALUE),
        pc.binary_join_element_wise("… (", pc.cast(lengths, pa.string()), " characters)", ""),
        "",
    )
    return pc.if_else(long, cut, values)


class RejectWriter(ClosingWriter):
    """The rows dropped from an audience, for analysts: CSV ``row,value,reason``, UTF-8, header.

    Values are defused against spreadsheet formula injection (see :func:`defuse_formulas`) and cut
    at ``MAX_REJECT_VALUE`` characters;
    the file is created with mode 0600 (it holds personal data). On an exception inside the
    ``with`` block the file is closed and kept: what it holds is correct as far as it goes.
    """

    COLUMNS = ("row", "value", "reason")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = create_private(self.path)
            self._file.write(",".join(self.COLUMNS).encode("ascii") + b"\n")
            schema = pa.schema([("row", pa.int64()), ("value", pa.string()), ("reason", pa.string())])
            options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
            self._writer = pacsv.CSVWriter(self._file, schema, write_options=options)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._schema = schema

    def write(self, rejects: pa.Table) -> None:
        if self._closed:
            raise ValueError("the reject file is already closed")
        if rejects.num_rows == 0:
            return
        columns = [rejects.column(name).combine_chunks() for name in self.COLUMNS]
        table = pa.table(
            [
                pc.cast(columns[0], pa.int64()),
                defuse_formulas(_shortened(pc.cast(columns[1], pa.string()))),
                defuse_formulas(pc.cast(columns[2], pa.string())),  # a reason may quote Actito's words
            ],
            schema=self._schema,
        )
        try:
            self._writer.write_table(table)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self.rows += table.num_rows

    def close(self) -> int:
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
                sync_close(self._file)
            except OSError as exc:
                raise write_error(self.path, exc) from exc
        return self.rows

    def _after_failure(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # the original exception matters more
