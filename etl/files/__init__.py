"""Files: audience and import files in Actito's CSV format, reject files for analysts, file names and
manifests, and the one way every private file is created."""

from typing import TYPE_CHECKING

from etl.files.manifest import file_sha256, write_manifest
from etl.files.names import Compression, final_file_name, name_matcher, name_pattern_problem, render_file_name
from etl.files.private import (_sync_directory, create_private, private_directory, replace_text, share_private,
                               write_error, writing)

if TYPE_CHECKING:
    from etl.files.writers import ZIP_DATE_TIME, CsvFileWriter, RejectWriter, WrittenFile

__all__ = [
    "ZIP_DATE_TIME", "Compression", "CsvFileWriter", "RejectWriter", "WrittenFile", "_sync_directory", "file_sha256",
    "create_private", "final_file_name", "name_matcher", "name_pattern_problem", "private_directory", "share_private",
    "render_file_name", "replace_text", "write_error", "write_manifest", "writing",
]

_WRITERS = frozenset({"ZIP_DATE_TIME", "CsvFileWriter", "RejectWriter", "WrittenFile"})


def __getattr__(name: str) -> object:
    """The writers need numpy and pyarrow (0.3 s to import): loaded when a file is written, not when
    `validate` checks file names (docs/benchmarks.md, "Start-up")."""
    if name in _WRITERS:
        from etl.files import writers

        value: object = getattr(writers, name)
        globals()[name] = value  # once: the next look-up is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
