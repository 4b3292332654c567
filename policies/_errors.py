"""The policies package's one error type."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PolicyError"]


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
