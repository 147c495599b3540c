"""Class tables and classifiers: ragged rows kept honestly, stored classes and distances."""

from __future__ import annotations

import numpy as np
import pytest

import csplugin
from csplugin.averaging import (
    ClassTable,
    DistanceClassSelector,
    PrecomputedClass2D,
    Ragged,
    StoredClass2D,
)
from csplugin.core.conventions import disc_mask
from csplugin.core.images import check_stacks, read_chunk
from csplugin.core.particles import ParticleTable
from csplugin.engines.transform import align_images


# --------------------------------------------------------------------------------- Ragged
def test_ragged_rows_keep_their_lengths() -> None:
    r = Ragged.from_rows([[1, 2, 3], [4], [5, 6]], np.int64)
    assert len(r) == 3
    np.testing.assert_array_equal(r.lengths, [3, 1, 2])
    np.testing.assert_array_equal(r[0], [1, 2, 3])
    np.testing.assert_array_equal(r[-1], [5, 6])
    sub = r[[2, 0]]
    assert isinstance(sub, Ragged)
    assert [list(x) for x in sub] == [[5, 6], [1, 2, 3]]
    assert [list(x) for x in r[1:]] == [[4], [5, 6]]
    assert [list(x) for x in r[np.array([True, False, True])]] == [[1, 2, 3], [5, 6]]
    np.testing.assert_array_equal(r.row_ids, [0, 0, 0, 1, 2, 2])
    with pytest.raises(IndexError):
        r[3]


def test_ragged_padding_is_explicit_and_dense_refuses_ragged_rows() -> None:
    r = Ragged.from_rows([[1, 2, 3], [4]], np.int64)
    values, mask = r.padded(fill=-1)
    np.testing.assert_array_equal(values, [[1, 2, 3], [4, -1, -1]])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False]])
    with pytest.raises(ValueError, match="padded"):
        r.to_dense()
    square = Ragged.from_dense(np.arange(6).reshape(3, 2))
    assert square.is_rectangular
    np.testing.assert_array_equal(square.to_dense(), np.arange(6).reshape(3, 2))


def test_ragged_rejects_inconsistent_offsets() -> None:
    with pytest.raises(ValueError):
        Ragged(np.arange(3), np.array([0, 2]))
    with pytest.raises(ValueError):
        Ragged(np.arange(3), np.array([0, 2, 1, 3]))


def test_class_table_unpacks_and_checks_its_rows() -> None:
    table = ClassTable.from_rows([[0, 1, 2], [3]], distances=[[0.1, 0.2, 0.3], [0.5]])
    indices, refl, distances = table
    assert [list(x) for x in indices] == [[0, 1, 2], [3]]
    assert not refl.values.any()
    np.testing.assert_array_equal(table.labels, [0, 1])
    np.testing.assert_array_equal(table.counts, [3, 1])
    with pytest.raises(ValueError, match="no members"):
        ClassTable.from_rows([[0, 1], []])
    with pytest.raises(ValueError, match="same rows"):
        ClassTable(indices, Ragged.from_rows([[False], [False]]), distances, [0, 1], False)


def test_anchored_table_names_rows_by_their_reference_and_drops_its_self_distance() -> None:
    neighbours = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]])
    dist = np.array([[0, 0.2, 0.4], [0, 0.1, 0.3], [0, 0.5, 0.6]])
    table = ClassTable.from_rows(neighbours, distances=dist, anchored=True)
    np.testing.assert_array_equal(table.labels, [0, 1, 2])
    np.testing.assert_array_equal(table.references, [0, 1, 2])
    own = table.own_distances()
    np.testing.assert_allclose(own.to_dense(), dist[:, 1:])


# ------------------------------------------------------------------------------ classifiers
def _aligned(table: ParticleTable) -> np.ndarray:
    raw = read_chunk(table, np.arange(len(table)), check_stacks(table))
    p = table.particles
    return align_images(raw, p["angle"].to_numpy(), p[["shift_x", "shift_y"]].to_numpy())


def test_stored_classes_are_the_file_classes_with_their_own_sizes(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    # drop particles so that the classes have 40, 25 and 10 members; mark 5 unclassified
    index = table.particles["class_index"].to_numpy()
    keep = np.concatenate([np.flatnonzero(index == 0), np.flatnonzero(index == 1)[:25],
                           np.flatnonzero(index == 2)[:15]])
    table = table.take(np.sort(keep))
    index = table.particles["class_index"].to_numpy().copy()
    index[np.flatnonzero(index == 2)[:5]] = -1
    table = table.with_columns(class_index=index)
    classes = StoredClass2D(table, distances=False).classify()
    np.testing.assert_array_equal(classes.labels, [0, 1, 2])
    np.testing.assert_array_equal(classes.counts, [40, 25, 10])
    assert not classes.anchored
    for k in range(3):
        np.testing.assert_array_equal(classes.indices[k], np.flatnonzero(index == k))
    assert not classes.refl.values.any()
    assert np.isnan(classes.distances.values).all()
    with pytest.raises(ValueError, match="distances"):
        DistanceClassSelector().select(classes)


def test_stored_distances_are_leave_one_out_correlations(tmp_path) -> None:
    from csplugin.synthetic import make_job

    job = make_job(tmp_path, n_per_class=12, box=32, noise_sigma=0.3, seed=3)
    table = csplugin.open_particles(job.particles_cs)
    classes = StoredClass2D(table).classify()
    aligned = _aligned(table).reshape(len(table), -1)[:, disc_mask(32).ravel()].astype(float)
    index = table.particles["class_index"].to_numpy()
    for k in range(3):
        members = classes.indices[k]
        assert np.all(np.diff(classes.distances[k]) >= 0)  # ascending
        assert set(members) == set(np.flatnonzero(index == k))
        for i, d in zip(members, classes.distances[k]):
            others = [j for j in members if j != i]
            rho = np.corrcoef(aligned[i], aligned[others].mean(axis=0))[0, 1]
            assert d == pytest.approx(np.sqrt(2 - 2 * rho), abs=1e-6)


def test_a_misaligned_particle_is_the_most_distant_member(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    index = table.particles["class_index"].to_numpy()
    victim = np.flatnonzero(index == 1)[7]
    angle = table.particles["angle"].to_numpy().copy()
    angle[victim] += np.pi / 2
    classes = StoredClass2D(table.with_columns(angle=angle)).classify()
    row = int(np.flatnonzero(classes.labels == 1)[0])
    assert classes.indices[row][-1] == victim
    assert classes.distances[row][-1] > 2 * classes.distances[row][-2]
    assert classes.distances[row][0] < 0.05  # noise-free, correctly aligned members agree


def test_stored_classifier_refuses_unclassified_input(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    table = table.with_columns(class_index=np.full(len(table), -1))
    from formats import InputError

    with pytest.raises(InputError, match="no 2D class"):
        StoredClass2D(table).classify()


def test_precomputed_classes_neighbour_table_and_ragged_rows(job) -> None:
    table = csplugin.open_particles(job.particles_cs)
    network = np.array([[0, 5, 9], [1, 0, 4], [2, 3, 8]])
    classes = PrecomputedClass2D(table, network).classify()
    assert classes.anchored
    np.testing.assert_array_equal(classes.labels, [0, 1, 2])
    ragged = PrecomputedClass2D(table, [np.array([3, 4, 5]), np.array([7])]).classify()
    assert not ragged.anchored
    np.testing.assert_array_equal(ragged.counts, [3, 1])
    with pytest.raises(ValueError, match="not a particle"):
        PrecomputedClass2D(table, [np.array([0, len(table)])])


def test_top_level_open_particles_gives_an_image_source(job) -> None:
    table = csplugin.open_particles(job.particles_star, project_dir=job.project)
    assert isinstance(table, ParticleTable)
    assert table.n == len(table) == 120
    assert table.images.shape == (120, 64, 64)
    first = table.images[:3]
    assert first.shape == (3, 64, 64) and first.dtype == np.float32
    np.testing.assert_array_equal(table.images[1], first[1])
    np.testing.assert_array_equal(table.images[[2, 0]], first[[2, 0]])
