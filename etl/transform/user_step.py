"""An activation's own pandas step (``transform = "file.py:function"``), run on each chunk between extract
and cleaning: whatever it returns is cleaned, deduplicated and guarded like a query's rows.

The module is the analyst's, in their project: it is loaded from its path, once per run, under a name of
its own (never through sys.path, so it cannot shadow or be shadowed by an installed module). Its failures
are theirs to fix, so they are said at their file and line, with the chunk's first source row."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import MappingProxyType, ModuleType, TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from etl.errors import TransformError

_HINT = "fix the transform function (`audience-sync preview NAME` runs it without delivering anything)"


@dataclass(frozen=True)
class TransformContext:
    """What the function may read about the run; frozen and its params read-only, so that a chunk's
    call cannot change what the next chunk sees."""

    activation: str
    run_date: date
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Shaped:
    #: the function's output, as Arrow
    table: pa.Table
    #: each output row's source row number (1-based), when the function kept pandas' index; else None
    rows: np.ndarray | None


class TransformStep:
    """One loaded transform function, applied chunk by chunk; counts the source rows it was given."""

    def __init__(self, file: Path, function: str, context: TransformContext) -> None:
        self.file = file.resolve()
        self.name = function
        self.context = TransformContext(context.activation, context.run_date, MappingProxyType(dict(context.params)))
        self.function = _load(self.file, function)
        self._next_row = 1

    def shape(self, batch: pa.RecordBatch, pick: Callable[[list[str]], str]) -> Shaped:
        """The function's output for ``batch``, reduced to the identifier column ``pick`` chooses from its
        columns (the others are the function's business only)."""
        first_row = self._next_row
        self._next_row += batch.num_rows
        frame = pa.Table.from_batches([batch]).to_pandas(types_mapper=pd.ArrowDtype)
        frame.index = pd.RangeIndex(first_row, first_row + batch.num_rows)
        try:
            result = self.function(frame, self.context)
        except Exception as exc:
            raise TransformError(
                f"{self.name}() raised {type(exc).__name__}: {exc} (in the chunk starting at source row "
                f"{first_row:,})", where=_line_of(exc.__traceback__, self.file), hint=_HINT) from None
        if not isinstance(result, pd.DataFrame):
            raise TransformError(f"{self.name}() returned {type(result).__name__}, not a pandas DataFrame",
                                 where=str(self.file), hint="return the chunk's DataFrame, changed as you need")
        names = [str(column) for column in result.columns]
        try:
            column = pick(names)
        except TransformError as exc:
            raise TransformError(f"in the DataFrame {self.name}() returned, {exc.what}", where=str(self.file),
                                 hint="keep the identifier column (or rename one to it) in what the function "
                                      "returns") from None
        index = result.columns.get_loc(column) if column in result.columns else names.index(column)
        identifiers = result.iloc[:, index]
        table = pa.table({column: pa.array(identifiers, from_pandas=True)})
        return Shaped(table, _source_rows(result.index, first_row, batch.num_rows))


def _line_of(tb: TracebackType | None, file: Path) -> str:
    """The innermost line of the analyst's file in the traceback: where their code raised, or called
    what raised (pandas' own frames say nothing they can fix)."""
    lines = [line for frame, line in traceback.walk_tb(tb) if Path(frame.f_code.co_filename) == file]
    return f"{file}:{lines[-1]}" if lines else str(file)


def _source_rows(index: pd.Index, first_row: int, count: int) -> np.ndarray | None:
    """Source row numbers from the index the chunk came with, if the function kept it (a filter, a new
    column); None when it built another one, whose numbers say nothing about the query's rows."""
    if not pd.api.types.is_integer_dtype(index.dtype):
        return None
    rows = index.to_numpy(dtype=np.int64, na_value=-1)
    if len(rows) and (rows.min() < first_row or rows.max() >= first_row + count):
        return None
    return rows


def _load(file: Path, function: str) -> Callable[..., Any]:
    """Import ``file`` as a module of its own. `validate` checked its syntax and the name; what remains is
    what only running it shows (an import that fails, an error at the top level)."""
    spec = importlib.util.spec_from_file_location(f"audience_sync_transform_{abs(hash(file))}", file)
    if spec is None or spec.loader is None:
        raise TransformError("cannot be loaded as a Python module", where=str(file))
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the module looks itself up there
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise TransformError(f"syntax error: {exc.msg}", where=f"{file}:{exc.lineno}") from None
    except Exception as exc:
        raise TransformError(f"loading the module raised {type(exc).__name__}: {exc}",
                             where=_line_of(exc.__traceback__, file), hint=_HINT) from None
    found = getattr(module, function, None)
    if not callable(found):
        raise TransformError(f"no function {function!r} in the module", where=str(file))
    return found
