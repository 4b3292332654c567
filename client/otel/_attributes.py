"""One OpenTelemetry instrument's attributes, translated into its signal's labels.

The policy's `otel` mapping names, per instrument, the attribute that carries each of
the signal's labels and the attributes it knows and does not send (`ignore`). Any other
attribute is undeclared: dropped and counted, the measurement kept (as an undeclared
label is for the client's own instruments). Values are checked against the signal's
domain later, by the cell lookup: a value outside it counts as `other`.
"""

from __future__ import annotations

from collections.abc import Mapping

from client._instruments import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
)
from policies import OTHER, OtelInstrument

__all__ = ["AttributeKey", "AttributeMap", "attribute_key", "oversized"]

AttributeKey = tuple[tuple[str, object], ...]
"""A measurement's attributes as a cache key: their items, in the caller's order."""


def attribute_key(attributes: Mapping[str, object] | None) -> AttributeKey:
    """The cache key of an attribute set (`TypeError` if a value is unhashable)."""
    key = tuple(attributes.items()) if attributes else ()
    hash(key)
    return key


class AttributeMap:
    """Translates OpenTelemetry attributes into one signal's labels."""

    __slots__ = ("_domains", "_ignored", "_labels")

    def __init__(self, spec: OtelInstrument, domains: Mapping[str, list[str]]) -> None:
        self._labels = dict(spec.attributes)
        self._ignored = frozenset(spec.ignore)
        self._domains = {label: frozenset(values) for label, values in domains.items()}

    def translate(self, attributes: Mapping[str, object] | None) -> tuple[dict[str, object], int]:
        """The labels an attribute set carries, and how many of its attributes are
        undeclared (neither mapped nor ignored)."""
        labels: dict[str, object] = {}
        undeclared = 0
        for key, value in (attributes or {}).items():
            label = self._labels.get(key)
            if label is not None:
                labels[label] = value
            elif key not in self._ignored:
                undeclared += 1
        return labels, undeclared

    def cell_labels(self, labels: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
        """The labels of the cell they fall in: a value outside the domain is `other`.

        Used to key state kept per cell (up-down counter and gauge levels), so that
        free-form values cannot grow it past the signal's domain.
        """
        return tuple(
            (label, value if isinstance(value, str) and value in domain else OTHER)
            for label, domain in self._domains.items()
            for value in (labels.get(label),)
        )


def oversized(attributes: Mapping[str, object] | None) -> bool:
    """Whether an attribute set exceeds the client's bounds (`client._instruments`):
    more attributes, a longer key or a longer string value than any declared one."""
    if not attributes:
        return False
    if len(attributes) > MAX_ATTRIBUTES:
        return True
    for key, value in attributes.items():
        if isinstance(key, str) and len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            return True
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            return True
    return False
