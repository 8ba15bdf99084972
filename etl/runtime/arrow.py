"""Process-wide pyarrow settings for cost and memory, not results: files are byte-identical either way."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType


def configure_arrow() -> None:
    """jemalloc (mimalloc keeps more freed pages: higher peaks), unless ``ARROW_DEFAULT_MEMORY_POOL`` is
    set; and pyarrow's first ``pa.array()`` finds pandas missing, so it does not import it for nothing
    (``to_pandas()`` still looks again)."""
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:
            pa.set_memory_pool(pa.system_memory_pool())
    if "pandas" in sys.modules:
        return  # already paid for: pyarrow may as well use it
    hidden = _HidePandas()
    sys.meta_path.insert(0, hidden)
    try:
        pa.array(["probe"])  # pyarrow looks for pandas here: in Cython, then in C++ (non-empty), once each
    finally:
        sys.meta_path.remove(hidden)


class _HidePandas(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "pandas":
            raise ImportError("pandas is not needed by this run")
        return None
