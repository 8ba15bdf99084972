"""Files: audience and import files in Actito's CSV format, reject files for analysts, file names and
manifests, and the one way every private file is created."""

from etl.files.manifest import write_manifest
from etl.files.names import Compression, final_file_name, name_matcher, name_pattern_problem, render_file_name
from etl.files.private import _sync_directory, create_private, private_directory, replace_text, write_error
from etl.files.writers import ZIP_DATE_TIME, CsvFileWriter, RejectWriter, WrittenFile

__all__ = [
    "ZIP_DATE_TIME", "Compression", "CsvFileWriter", "RejectWriter", "WrittenFile", "_sync_directory",
    "create_private", "final_file_name", "name_matcher", "name_pattern_problem", "private_directory",
    "render_file_name", "replace_text", "write_error", "write_manifest",
]
