"""A dbt model as an activation's query: read from the project's ``target/manifest.json``, never by running
dbt. The job reads what dbt last built; the checks here make sure that is what the analyst means (the
manifest exists, names the model, and is not older than the model's file)."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.config.base import ConfigModel, Problem

MANIFEST = Path("target") / "manifest.json"


class DbtModel(ConfigModel):
    """``dbt = { project_dir = "../analytics", model = "vip_customers" }`` in place of ``sql``."""

    project_dir: Path
    model: str
    #: the project's package name, when another package of the project has a model of the same name
    package: str | None = None
    #: run the model's compiled SQL instead of reading the relation dbt built (for an ephemeral model, or a
    #: view the job's warehouse user may not select from)
    compiled: bool = False


@dataclass(frozen=True)
class QuerySource:
    """What an activation's extract runs, whichever way it is written."""

    text: str
    #: where a message about the query points: the SQL file, or the dbt model and its manifest
    where: str
    #: what the run's manifest records about the query: the file or model it comes from, and its sha256
    record: dict[str, str]


class DbtError(Exception):
    """A dbt model cannot be used as written; ``problem`` is (where, what to do), for a ConfigError."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(f"{problem[0]}: {problem[1]}")


def dbt_where(project_dir: Path, dbt: DbtModel) -> str:
    """A model's location for messages, written without reading the manifest (cheap, and never fails)."""
    return f"dbt model {dbt.model} ({project_dir / MANIFEST})"


def dbt_source(project_dir: Path, dbt: DbtModel, key: str) -> QuerySource:
    """The model's query from the manifest; ``key`` (``[activations.x] dbt``) locates a problem.

    Raises DbtError when the manifest is missing, stale or lacks the model or its compiled code."""
    manifest_file = project_dir / MANIFEST
    manifest = _manifest(manifest_file, key)
    node = _node(manifest, dbt, manifest_file, key)
    _check_fresh(project_dir, manifest, node, manifest_file, key)
    relation = _relation(node)
    record = {"dbt_model": str(node["unique_id"]), "dbt_relation": relation}
    if not dbt.compiled and (node.get("config") or {}).get("materialized") == "ephemeral":
        raise DbtError((f"{key} model", f"{node['unique_id']} is ephemeral: dbt builds no relation to read; "
                                        "add compiled = true to run its compiled SQL"))
    if not dbt.compiled:
        return _source(f"SELECT * FROM {relation}", dbt_where(project_dir, dbt), record)
    code = node.get("compiled_code") or node.get("compiled_sql")
    if not isinstance(code, str) or not code.strip():
        raise DbtError((f"{key} compiled", f"{manifest_file} has no compiled code for {node['unique_id']}: run "
                                           f"`dbt compile --select {dbt.model}` in {project_dir}, or remove "
                                           "compiled = true to read the relation dbt built"))
    return _source(code, dbt_where(project_dir, dbt), record)


def _source(text: str, where: str, record: dict[str, str]) -> QuerySource:
    """The hash is of the text run, not of the model's file: Jinja, macros and vars all change what runs."""
    return QuerySource(text, where, {**record, "sql_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})


def _manifest(file: Path, key: str) -> dict[str, Any]:
    try:
        stat = file.stat()
    except FileNotFoundError:
        raise DbtError((f"{key} project_dir", f"no {file}: run `dbt compile` or `dbt run` in {file.parent.parent} "
                                              "(the job reads the model from dbt's manifest)")) from None
    return _read_manifest(file, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_manifest(file: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    """Parsed once per version of the file: a large project's manifest is tens of megabytes, and every
    command reads it (the configuration's checks, then the run); few are kept, as each is large in memory."""
    del mtime_ns, size  # the cache key only
    try:
        manifest = json.loads(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise DbtError((str(file), f"cannot be read as dbt's manifest ({exc}): run `dbt compile` again")) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("nodes"), dict):
        raise DbtError((str(file), "not a dbt manifest (no nodes): run `dbt compile` again"))
    return manifest


def _node(manifest: dict[str, Any], dbt: DbtModel, file: Path, key: str) -> dict[str, Any]:
    models = {node_id: node for node_id, node in manifest["nodes"].items()
              if isinstance(node, dict) and node.get("resource_type", "model") == "model"
              and node_id.startswith("model.")}
    found = [node for node_id, node in models.items()
             if node_id.rsplit(".", 1)[-1] == dbt.model and (dbt.package is None or node.get("package_name") ==
                                                             dbt.package)]
    if len(found) == 1:
        return found[0]
    if found:
        packages = ", ".join(sorted(str(node.get("package_name")) for node in found))
        raise DbtError((f"{key} model", f"{dbt.model!r} is a model of several packages ({packages}): "
                                        "add package = \"NAME\""))
    names = sorted({node_id.rsplit(".", 1)[-1] for node_id in models})
    close = difflib.get_close_matches(dbt.model, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"it has {_some(names)}"
    raise DbtError((f"{key} model", f"no model {dbt.model!r} in {file}: {hint} (if the model is new, run "
                                    "`dbt compile` again)"))


def _some(names: list[str]) -> str:
    if not names:
        return "no models"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _check_fresh(project_dir: Path, manifest: dict[str, Any], node: dict[str, Any], file: Path, key: str) -> None:
    """A model edited since the manifest was written: the job would read what dbt built before the edit."""
    source = node.get("original_file_path")
    if not isinstance(source, str):
        return
    try:
        edited = (project_dir / source).stat().st_mtime
    except OSError:  # deployed without the project's sources (a pod mounts the manifest only): nothing to compare
        return
    generated = _generated_at(manifest) or file.stat().st_mtime
    if edited > generated:
        stamp = datetime.fromtimestamp(generated, UTC).isoformat(timespec="seconds")
        raise DbtError((f"{key} model", f"{project_dir / source} was changed after {file} was written ({stamp}): "
                                        f"run `dbt run --select {node.get('name', '')}` (or `dbt compile`) in "
                                        f"{project_dir}, so the job reads what the model says now"))


def _generated_at(manifest: dict[str, Any]) -> float | None:
    """When dbt wrote the manifest, as it says (a copy of the file has a new mtime, not new contents)."""
    text = manifest.get("metadata", {}).get("generated_at") if isinstance(manifest.get("metadata"), dict) else None
    try:
        stamp = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _relation(node: dict[str, Any]) -> str:
    """dbt's own quoted name of the relation; else built from its parts as dbt quotes them by default."""
    if isinstance(node.get("relation_name"), str) and node["relation_name"]:
        return str(node["relation_name"])
    parts = [node.get("database"), node.get("schema"), node.get("alias") or node.get("name")]
    return ".".join(f'"{part}"' for part in parts if part)
