"""Classifiers: ``Class2D.classify() -> ClassTable`` (unpacks as indices, refl, distances).

:class:`StoredClass2D` reads the 2D classes of a cryoSPARC/RELION file;
:class:`PrecomputedClass2D` takes classes computed elsewhere (e.g. an ASPIRE-style
``(n, n_nbor)`` neighbour table). A rotation-invariant neighbour-network classifier
returns the same :class:`~csplugin.averaging.classes.ClassTable` with ``anchored=True``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from csplugin.averaging.classes import ClassTable, Ragged
from csplugin.core.conventions import disc_mask
from csplugin.core.images import iter_chunks
from csplugin.core.particles import ParticleTable
from csplugin.engines.transform import align_images
from formats import InputError

__all__ = ["Class2D", "StoredClass2D", "PrecomputedClass2D"]


class Class2D(ABC):
    """A classifier of the particles of ``src`` (a :class:`~csplugin.core.particles.ParticleTable`).

    Subclasses implement :meth:`classify`.
    """

    def __init__(self, src: ParticleTable) -> None:
        self.src = src

    @abstractmethod
    def classify(self) -> ClassTable:
        """Classify the particles.

        Returns
        -------
        ClassTable
            Unpacks as ``(class_indices, class_refl, class_distances)``, each indexed
            ``[class][member]``; member positions are 0-based rows of ``src``.
        """


class StoredClass2D(Class2D):
    """The 2D classes stored in the input file, one row per class present (ascending).

    Members are the particles with that ``class_index`` (unclassified ones, index -1, are
    left out); no member is mirrored (2D classification in cryoSPARC and RELION does not
    mirror). Classes keep their own sizes: nothing is truncated or padded.

    Distances (``distances=True``) are computed in two streaming passes: each particle,
    aligned with its stored pose, is compared inside the inscribed disc with the mean of
    the *other* members of its class (leave-one-out, so small classes are not biased):
    ``d = sqrt(2 - 2 ρ)``, ``ρ`` the Pearson correlation (the Euclidean distance of the
    two standardised images / sqrt(pixels), as ASPIRE's ``sqrt(2 - 2 corr)``). NaN for a
    class of one. Members are then sorted by ascending distance (member 0 = the most
    typical). With ``distances=False`` nothing is read, distances are NaN and members
    stay in table order; selectors that need distances refuse such a table.

    Parameters
    ----------
    src
        The particles.
    distances
        Compute member distances (two passes over the classified particles).
    interpolation
        Resampling used to align particles for the distances.
    chunk_size
        Particles read at a time (default :func:`csplugin.core.images.chunk_size_for`).
    """

    def __init__(self, src: ParticleTable, *, distances: bool = True,
                 interpolation: str = "cubic", chunk_size: int | None = None) -> None:
        super().__init__(src)
        self.distances = distances
        self.interpolation = interpolation
        self.chunk_size = chunk_size

    def classify(self) -> ClassTable:
        index = self.src.particles["class_index"].to_numpy(np.int64)
        rows = np.flatnonzero(index >= 0)
        if rows.size == 0:
            raise InputError(self.src.source, "has no 2D class assignments (alignments2D/class "
                             "or rlnClassNumber)", "pass the particles of a 2D classification job")
        labels, position = np.unique(index[rows], return_inverse=True)
        order = np.argsort(position, kind="stable")
        members = rows[order]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(position, minlength=labels.size))])
        dist = np.full(members.size, np.nan)
        if self.distances:
            d = stored_class_distances(self.src, members, position[order], labels.size,
                                       self.interpolation, self.chunk_size)
            groups = np.repeat(np.arange(labels.size), np.diff(offsets))
            resort = np.lexsort((np.nan_to_num(d, nan=np.inf), groups))
            members, dist = members[resort], d[resort]
        indices = Ragged(members, offsets)
        return ClassTable(indices, indices.with_values(np.zeros(members.size, bool)),
                          indices.with_values(dist), labels, anchored=False)


def stored_class_distances(src: ParticleTable, members: np.ndarray, class_of: np.ndarray,
                           n_classes: int, interpolation: str = "cubic",
                           chunk_size: int | None = None) -> np.ndarray:
    """Leave-one-out distances of particles to their stored class (see :class:`StoredClass2D`).

    Parameters
    ----------
    members
        ``(m,)`` particle rows of ``src``.
    class_of
        ``(m,)`` class position (0 .. n_classes-1) of each member.

    Returns
    -------
    np.ndarray
        ``(m,)`` float64 ``sqrt(2 - 2 ρ)``, NaN where the class has one member.
    """
    sub = src.take(members)
    stacks = src.images.stacks
    disc = disc_mask(src.box()).ravel()
    pixels = int(disc.sum())
    angles = sub.particles["angle"].to_numpy()
    shifts = sub.particles[["shift_x", "shift_y"]].to_numpy()

    def aligned() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rows, raw in iter_chunks(sub, chunk_size, stacks):
            images = align_images(raw, angles[rows], shifts[rows], interpolation)
            yield rows, images.reshape(len(rows), -1)[:, disc].astype(np.float64)

    sums = np.zeros((n_classes, pixels))
    for rows, a in aligned():
        _add_rows(sums, class_of[rows], a)
    total = sums.sum(axis=1)
    power = np.einsum("ij,ij->i", sums, sums)
    rho = np.empty(members.size)
    for rows, a in aligned():
        c = class_of[rows]
        dot = np.einsum("ij,ij->i", a, sums[c])
        aa = np.einsum("ij,ij->i", a, a)
        sa = a.sum(axis=1)
        au, su, uu = dot - aa, total[c] - sa, power[c] - 2 * dot + aa  # u = class sum - a
        with np.errstate(divide="ignore", invalid="ignore"):
            rho[rows] = (au - sa * su / pixels) / np.sqrt(
                (aa - sa**2 / pixels) * (uu - su**2 / pixels))
    counts = np.bincount(class_of, minlength=n_classes)
    rho[counts[class_of] < 2] = np.nan
    return np.sqrt(np.maximum(2 - 2 * np.clip(rho, -1, 1), 0))


def _add_rows(sums: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> None:
    """``sums[g] += rows[i]`` for every ``i`` with ``groups[i] = g`` (one matrix product)."""
    present, inverse = np.unique(groups, return_inverse=True)
    onehot = np.zeros((present.size, groups.size))
    onehot[inverse, np.arange(groups.size)] = 1.0
    sums[present] += onehot @ rows


class PrecomputedClass2D(Class2D):
    """Classes computed elsewhere: a neighbour table or any (ragged) list of classes.

    Parameters
    ----------
    src
        The particles the member positions refer to.
    class_indices
        ``(n, n_nbor)`` array (a neighbour network: row ``k`` lists particle ``k`` first,
        then its neighbours) or a sequence of 1-D member arrays of any lengths.
    class_refl
        Same shape, bool: mirror the member before aligning it (default: none).
    class_distances
        Same shape, float (default: NaN).
    anchored
        Member 0 of each class is its reference particle (default: True for a 2-D array,
        False for a list of rows).
    labels
        ``(n_classes,)`` class names (default: member 0 when anchored, else the row number).
    """

    def __init__(self, src: ParticleTable, class_indices: Sequence[ArrayLike] | np.ndarray,
                 class_refl: Sequence[ArrayLike] | np.ndarray | None = None,
                 class_distances: Sequence[ArrayLike] | np.ndarray | None = None, *,
                 anchored: bool | None = None, labels: ArrayLike | None = None) -> None:
        super().__init__(src)
        if anchored is None:
            anchored = isinstance(class_indices, np.ndarray) and class_indices.ndim == 2
        self._table = ClassTable.from_rows(class_indices, class_refl, class_distances, labels,
                                           anchored)
        bad = (self._table.indices.values < 0) | (self._table.indices.values >= src.n)
        if bad.any():
            raise ValueError(f"member {self._table.indices.values[bad][0]} is not a particle "
                             f"of the source (0 .. {src.n - 1})")

    def classify(self) -> ClassTable:
        return self._table
