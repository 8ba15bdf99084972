"""Process-wide pyarrow settings, applied once by the command line before any work.

Both are about a run's fixed cost and memory, not its results: files are byte-identical either way.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType


def configure_arrow() -> None:
    """A leaner allocator unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise, and no pandas for pyarrow.

    * Memory: pyarrow's default allocator (mimalloc) keeps more freed pages for reuse, so a run
      peaks higher at the same speed (docs/benchmarks.md). jemalloc, where this pyarrow build has
      it, else the system allocator.
    * pandas: the first ``pa.array()`` of a run, on anything but an Arrow object, makes pyarrow
      import pandas to check whether the value is a pandas object. No audience run uses pandas,
      whose import costs every run time and memory. pyarrow is made to find pandas missing once;
      code that uses pandas later still imports it, and ``to_pandas()`` makes pyarrow look again
      (it retries the import when asked to convert).
    """
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # not every platform's pyarrow is built with it
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
