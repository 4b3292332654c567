"""A signal's declared attribute domain, flattened to cell indices.

Each label's values are the declared ones plus `policies.OTHER`; the cells are their
cross product, indexed in mixed radix (first declared label most significant). A
release covers every cell, so the set of keys sent never depends on the data.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from policies import OTHER

__all__ = ["CellDomain"]


class CellDomain:
    """Maps attribute sets to cell indices and back for one signal."""

    __slots__ = ("_index_of", "labels", "size", "values")

    def __init__(self, attributes: Mapping[str, list[str]]) -> None:
        self.labels: tuple[str, ...] = tuple(attributes)
        self.values: tuple[tuple[str, ...], ...] = tuple(
            (*attributes[label], OTHER) for label in self.labels
        )
        self._index_of: tuple[dict[str, int], ...] = tuple(
            {v: i for i, v in enumerate(vals)} for vals in self.values
        )
        size = 1
        for vals in self.values:
            size *= len(vals)
        self.size = size

    def resolve(self, attributes: Mapping[str, object]) -> tuple[int, list[str]]:
        """The cell of an attribute set, and the labels it carries that are not declared.

        A missing label, a value outside the declared domain, or a value that is not a
        string counts as `other`; undeclared labels are ignored (the caller counts them).
        """
        index = 0
        for label, vals, lookup in zip(self.labels, self.values, self._index_of, strict=True):
            value = attributes.get(label)
            pos = lookup.get(value) if isinstance(value, str) else None
            index = index * len(vals) + (len(vals) - 1 if pos is None else pos)
        undeclared = [label for label in attributes if label not in self.labels]
        return index, undeclared

    def cells(self) -> list[dict[str, str]]:
        """The attribute dict of every cell, in index order."""
        return [dict(zip(self.labels, combo, strict=True)) for combo in self.cell_tuples()]

    def cell_tuples(self) -> list[tuple[str, ...]]:
        """The attribute values of every cell, in index order."""
        return list(itertools.product(*self.values))
