"""The analytics package's error tree.

AnalyticsError
├── WarehouseError          the warehouse file is missing, unreadable or not a warehouse
└── InvalidQueryError       a query argument is out of range (also a ValueError)
"""

from __future__ import annotations

__all__ = ["AnalyticsError", "InvalidQueryError", "WarehouseError"]


class AnalyticsError(Exception):
    """Root of every error the analytics package raises on purpose."""


class WarehouseError(AnalyticsError):
    """The warehouse cannot be read: no such file, not DuckDB, or no warehouse schema."""


class InvalidQueryError(AnalyticsError, ValueError):
    """A query argument is invalid: a confidence level outside (0, 1), a bad label."""
