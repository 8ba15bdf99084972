"""The transform file an audience names, checked without running it: `validate` (and every command that
loads the configuration) must not execute an analyst's code, yet should find a missing file, a syntax
error or a missing function before a run reads a million rows."""

from __future__ import annotations

import ast
from pathlib import Path

from etl.config.base import Problem


def transform_problems(file: Path, function: str, where: str) -> list[Problem]:
    """Problems of ``file``'s ``function`` as the module is written; what only running it can show (an
    import it makes that fails) is said by the run, with the file and line."""
    try:
        source = file.read_bytes()
    except FileNotFoundError:
        return [(where, f"{file}: no such file (the path is relative to the configuration file)")]
    except OSError as exc:
        return [(where, f"{file}: cannot be read ({exc.strerror})")]
    try:
        tree = ast.parse(source, filename=str(file))
    except SyntaxError as exc:
        return [(where, f"{file}:{exc.lineno}: syntax error: {exc.msg}")]
    except ValueError as exc:  # null bytes
        return [(where, f"{file}: not Python source ({exc})")]
    if function not in _top_level_names(tree):
        return [(where, f"{file}: no function {function!r} at the top level of the module "
                        f"(it defines {', '.join(sorted(_functions(tree))) or 'none'})")]
    return []


def _functions(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _top_level_names(tree: ast.Module) -> set[str]:
    """Every name the module binds at its top level: a def, an assignment or an import can provide it."""
    names = _functions(tree)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names
