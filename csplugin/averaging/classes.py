"""The class table: what every classifier returns and every selector and averager reads.

A classification is a list of classes, each a list of member particles (0-based positions in
the particle source), with a reflection flag and a distance per member. Two forms share it:

stored 2D classes (:class:`~csplugin.averaging.StoredClass2D`)
    One row per class of the input file; rows have different lengths (ragged), are
    disjoint, and no member is special: members are sorted by their distance to the class
    (member 0 is the most typical one). ``anchored`` is False.
neighbour networks (ASPIRE's ``(n_particles, n_nbor)`` form; a later rotation-invariant
classifier)
    One row per particle, all rows ``n_nbor`` long; column 0 is the particle itself
    (distance 0), the others its nearest neighbours in ascending distance. Rows overlap.
    ``anchored`` is True.

Rows are stored in CSR form (:class:`Ragged`): nothing is truncated or padded. Use
:meth:`Ragged.padded` for a rectangular array with an explicit mask, :meth:`Ragged.to_dense`
when every row has the same length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Ragged", "ClassTable"]


@dataclass(frozen=True, eq=False)
class Ragged:
    """Rows of different lengths, CSR: row ``k`` is ``values[offsets[k]:offsets[k + 1]]``.

    Attributes
    ----------
    values
        ``(total,)`` all rows concatenated.
    offsets
        ``(n_rows + 1,)`` int64, ``offsets[0] = 0``, non-decreasing, ``offsets[-1] = total``.
    """

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets, np.int64)
        values = np.asarray(self.values)
        if (offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0
                or np.any(np.diff(offsets) < 0) or offsets[-1] != values.shape[0]):
            raise ValueError(f"offsets must start at 0, never decrease and end at "
                             f"len(values) = {values.shape[0]}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "offsets", offsets)

    @classmethod
    def from_rows(cls, rows: Sequence[ArrayLike], dtype: np.dtype | type | None = None
                  ) -> Ragged:
        """From a sequence of 1-D rows (a list of arrays or a 2-D array)."""
        arrays = [np.asarray(r, dtype).ravel() for r in rows]
        lengths = np.array([a.size for a in arrays], np.int64)
        values = np.concatenate(arrays) if arrays else np.empty(0, dtype or np.float64)
        return cls(values.astype(dtype, copy=False) if dtype else values,
                   np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def from_dense(cls, array: ArrayLike) -> Ragged:
        """From a 2-D ``(n_rows, width)`` array (every row ``width`` long)."""
        a = np.asarray(array)
        if a.ndim != 2:
            raise ValueError(f"need a 2-D array, got shape {a.shape}")
        return cls(a.ravel().copy(), np.arange(a.shape[0] + 1, dtype=np.int64) * a.shape[1])

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        """``(n_rows,)`` int64 row lengths."""
        return np.diff(self.offsets)

    @property
    def row_ids(self) -> np.ndarray:
        """``(total,)`` int64: the row of every value."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def __getitem__(self, key: int | slice | ArrayLike) -> np.ndarray | Ragged:
        """``int`` -> that row (a 1-D view); slice, index array or mask -> :class:`Ragged`."""
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.values[self.offsets[k]:self.offsets[k + 1]]
        rows = np.arange(len(self))[key]
        lengths = self.lengths[rows]
        starts = self.offsets[rows]
        take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) \
            + np.arange(lengths.sum())
        return Ragged(self.values[take], np.concatenate([[0], np.cumsum(lengths)]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self.values[self.offsets[k]:self.offsets[k + 1]]

    @property
    def is_rectangular(self) -> bool:
        """Whether every row has the same length."""
        return len(self) == 0 or bool(np.all(self.lengths == self.lengths[0]))

    def to_dense(self) -> np.ndarray:
        """``(n_rows, width)`` copy; ValueError unless every row has the same length."""
        if not self.is_rectangular:
            raise ValueError(f"rows have lengths {self.lengths.min()} to {self.lengths.max()}; "
                             "use padded() for a rectangular array with a mask")
        width = int(self.lengths[0]) if len(self) else 0
        return self.values.reshape(len(self), width).copy()

    def padded(self, fill: object = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rectangular ``(n_rows, max_length)`` copy and its ``mask`` (True = a real value).

        Padding is never silent: positions where ``mask`` is False hold ``fill``.
        """
        width = int(self.lengths.max()) if len(self) else 0
        mask = np.arange(width)[None, :] < self.lengths[:, None]
        out = np.full((len(self), width), fill, dtype=self.values.dtype)
        out[mask] = self.values
        return out, mask

    def with_values(self, values: ArrayLike) -> Ragged:
        """The same rows holding other ``(total,)`` values (e.g. a computed per-member column)."""
        return Ragged(np.asarray(values), self.offsets)


@dataclass(frozen=True, eq=False)
class ClassTable:
    """A classification: classes of member particles (see the module docstring).

    Unpacks as ``class_indices, class_refl, class_distances = table`` (ASPIRE's
    ``classify()`` contract), each a :class:`Ragged` indexed ``[class][member]``.

    Attributes
    ----------
    indices
        int64 member particles (0-based positions in the particle source).
    refl
        bool per member: the member is mirrored (:func:`csplugin.core.conventions.mirror_y`)
        before it is aligned.
    distances
        float64 per member, ascending within a class (NaN: not computed).
    labels
        ``(n_classes,)`` int64 name of each class: the stored 0-based class index, or, for a
        neighbour network, the particle the row belongs to.
    anchored
        True when member 0 of every class is its reference particle (neighbour networks,
        distance 0); False for stored classes.
    """

    indices: Ragged
    refl: Ragged
    distances: Ragged
    labels: np.ndarray
    anchored: bool

    def __post_init__(self) -> None:
        for name in ("refl", "distances"):
            if not np.array_equal(getattr(self, name).offsets, self.indices.offsets):
                raise ValueError(f"{name} must have the same rows as indices")
        if np.any(self.indices.lengths == 0):
            raise ValueError(f"class {int(np.argmin(self.indices.lengths))} has no members")
        labels = np.asarray(self.labels, np.int64)
        if labels.shape != (len(self.indices),):
            raise ValueError(f"need {len(self.indices)} labels, got shape {labels.shape}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "indices", self.indices.with_values(
            self.indices.values.astype(np.int64, copy=False)))
        object.__setattr__(self, "refl", self.refl.with_values(
            self.refl.values.astype(bool, copy=False)))
        object.__setattr__(self, "distances", self.distances.with_values(
            self.distances.values.astype(np.float64, copy=False)))

    @classmethod
    def from_rows(cls, indices: Sequence[ArrayLike], refl: Sequence[ArrayLike] | None = None,
                  distances: Sequence[ArrayLike] | None = None, labels: ArrayLike | None = None,
                  anchored: bool = False) -> ClassTable:
        """From per-class rows (lists of arrays, or 2-D arrays for a neighbour network).

        ``refl`` defaults to False, ``distances`` to NaN, ``labels`` to the row number
        (anchored: to column 0, the reference particle).
        """
        idx = Ragged.from_rows(indices, np.int64)
        rf = idx.with_values(np.zeros(idx.values.size, bool)) if refl is None \
            else Ragged.from_rows(refl, bool)
        dist = idx.with_values(np.full(idx.values.size, np.nan)) if distances is None \
            else Ragged.from_rows(distances, np.float64)
        if labels is None:
            labels = idx.values[idx.offsets[:-1]] if anchored else np.arange(len(idx))
        return cls(idx, rf, dist, np.asarray(labels), anchored)

    def __iter__(self) -> Iterator[Ragged]:
        return iter((self.indices, self.refl, self.distances))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def counts(self) -> np.ndarray:
        """``(n_classes,)`` members per class."""
        return self.indices.lengths

    @property
    def references(self) -> np.ndarray:
        """``(n_classes,)`` member 0 of each class (the reference particle when anchored)."""
        return self.indices.values[self.indices.offsets[:-1]]

    def own_distances(self) -> Ragged:
        """Per-member distances without the reference's own (anchored: column 0 dropped)."""
        if not self.anchored:
            return self.distances
        keep = np.ones(self.distances.values.size, bool)
        keep[self.distances.offsets[:-1]] = False
        return Ragged(self.distances.values[keep],
                      self.distances.offsets - np.arange(len(self) + 1))
