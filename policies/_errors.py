"""The policies package's one error type."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["PolicyError", "yaml_problem"]


class PolicyError(ValueError):
    """A policy file is missing, unreadable or invalid.

    Carries the file, the key path inside it (dotted, empty for the whole file) and the
    reason, so an operator can fix the file without reading a traceback.
    """

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = Path(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else str(self.path)
        super().__init__(f"{where}: {reason}")


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Why a text is not YAML, on one line, with the line and column where the parser
    stopped (PyYAML's own message spans lines and names no file)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "not valid YAML: " + " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = " ".join((exc.problem or exc.context or "cannot parse").split())
    context = ""
    if exc.context and exc.problem:
        since = exc.context_mark
        moved = since is not None and (mark is None or since.line != mark.line)
        started = f" from line {since.line + 1}" if since is not None and moved else ""
        context = f" ({' '.join(exc.context.split())}{started})"
    return f"not valid YAML{at}: {reason}{context}"
