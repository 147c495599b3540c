"""``csplugin classify``: rotation-invariant classification of particles never classified.

:func:`classify_particles` runs :class:`~csplugin.averaging.rir.classifier.RIRClass2D` on a particle
table and writes, in ``OUTDIR``:

``neighbors.npz``
    The neighbour network, arrays ``(n, n_nbor)``: ``indices`` (int64, 0-based rows of the
    input; column 0 is the particle itself), ``reflections`` (bool: mirror the neighbour
    with :func:`csplugin.core.conventions.mirror_y` first), ``distances`` (float64, ascending)
    and ``rotations`` (float64 radians ``α``: ``align_images(neighbour, α)`` matches the
    particle), plus ``uid`` ``(n,)`` of the input rows.
``summary.json``
    Parameters, sizes (noise variance, components, triplets), stage timings, class sizes.
``particles.star``, ``particles.cs`` (with ``n_classes``)
    The input particles with a new 2D classification: ``class_index`` from aligned k-means
    of the particles' network means in the steerable coordinates
    (:mod:`~csplugin.averaging.rir.clustering`; numbered by decreasing size, 0-based in
    ``.cs``, 1-based in ``.star``), ``angle`` the in-plane rotation into the class frame,
    shift 0 (classification works on the images as they are, particles centred in the
    box), no class posterior; every other field kept. ``csplugin
    class-averages`` and the :mod:`csplugin.averaging` toolkit read them as stored
    classes. Image paths: in ``.star`` relative to the current directory when the stack
    lies below it (RELION), else absolute; in ``.cs`` absolute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from csplugin.averaging.rir.classifier import RIRClass2D
from csplugin.averaging.rir.clustering import aligned_kmeans, network_means
from csplugin.core.native import check_writable, save_particles
from csplugin.core.particles import ParticleTable
from csplugin.outputs.directory import claim, transaction
from csplugin.outputs.paths import relion_path
from formats import InputError


@dataclass(frozen=True)
class ClassifyResult:
    """What :func:`classify_particles` wrote (``star``/``cs`` None without classes)."""

    neighbors: Path
    summary: Path
    star: Path | None
    cs: Path | None
    class_sizes: list[int] | None


@transaction()  # the result replaces OUTDIR's previous one on return, or nothing changes
def classify_particles(table: ParticleTable, outdir: str | Path, *, n_nbor: int = 10,
                       n_classes: int | None = None, seed: int = 0, overwrite: bool = False,
                       voltage: float | None = None, cs: float | None = None,
                       amplitude_contrast: float | None = None,
                       **options: Any) -> ClassifyResult:
    """Classify ``table`` with :class:`RIRClass2D` and write the outputs (module docstring).

    Parameters
    ----------
    table
        The particles (one box size).
    outdir
        Output directory (created).
    n_nbor
        Neighbour-network width, the particle itself included.
    n_classes
        Also partition the particles into this many classes (None: no partition).
    seed
        Seed of every random choice (results are reproducible).
    overwrite
        Replace existing outputs.
    voltage, cs, amplitude_contrast
        kV, mm, fraction: for ``particles.star`` (with ``n_classes``) when the input has none;
        never replace the input's values.
    **options
        Further :class:`RIRClass2D` parameters (e.g. ``fspca_components``).
    """
    outdir = Path(outdir)
    table.box()  # one box size, or a clear error
    optics = {"voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast}
    if n_classes is not None:  # the .star/.cs will be writable (voltage, box): say so now
        check_writable(table, ".star", **optics)
        check_writable(table, ".cs")
    if n_classes is not None and not 1 <= n_classes <= len(table):
        raise InputError(None, f"--n-classes {n_classes} must lie in [1, {len(table)}] (the "
                         "number of particles)", "ask for fewer classes")
    try:
        classifier = RIRClass2D(table, n_nbor=n_nbor, seed=seed, **options)
    except ValueError as exc:
        raise InputError(table.source, f"cannot be classified: {exc}",
                         "adjust the option named in the message") from None
    products = [outdir / "neighbors.npz", outdir / "summary.json"]
    if n_classes is not None:
        products += [outdir / "particles.star", outdir / "particles.cs"]
    out = claim(outdir, [p.name for p in products], job="classify", overwrite=overwrite)
    final, products = products, [out.stage(p.name) for p in products]  # all-or-nothing there
    try:
        classifier.classify()
    except ValueError as exc:
        raise InputError(table.source, f"cannot be classified: {exc}",
                         "use more particles or check the noise level") from None
    np.savez(products[0], indices=classifier.class_indices,
             reflections=classifier.class_refl, distances=classifier.class_distances,
             rotations=classifier.class_rotations,
             uid=table.particles["uid"].to_numpy(np.uint64))
    summary: dict[str, Any] = {"input": str(table.source), "n_nbor": n_nbor, "seed": seed,
                               "options": {k: v for k, v in options.items()},
                               "classifier": classifier.summary}
    sizes = None
    if n_classes is not None:
        labels, angles = partition(classifier, n_classes, np.random.default_rng(seed))
        sizes = np.bincount(labels, minlength=n_classes).tolist()
        classified = replace(table.with_columns(class_index=labels, angle=angles, shift_x=0.0,
                                                shift_y=0.0, class_posterior=np.nan),
                             aligned=True)  # the classification's in-plane alignment
        stacks = [Path(s) for s in classified.particles["stack"]]
        save_particles(classified.with_columns(image_path=[relion_path(s) for s in stacks]),
                       products[2], **optics)
        save_particles(classified.with_columns(image_path=[str(s.absolute()) for s in stacks]),
                       products[3])
        summary["class_sizes"] = sizes
    products[1].write_text(json.dumps(summary, indent=2, default=float) + "\n")
    star, cs = (final[2], final[3]) if n_classes is not None else (None, None)
    return ClassifyResult(final[0], final[1], star, cs, sizes)


def partition(classifier: RIRClass2D, n_classes: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint classes and in-plane angles from a classified :class:`RIRClass2D`: aligned
    k-means of the particles' network means (:mod:`~csplugin.averaging.rir.clustering`).

    Returns
    -------
    labels, angles
        ``(n,)`` class (0 = largest) and ``(n,)`` radians into the class frame.
    """
    if classifier.coordinates is None or classifier.spca is None:
        raise RuntimeError("classify() first")
    ells = classifier.spca.ells
    means = network_means(classifier.coordinates, ells, classifier.class_indices,
                          classifier.class_refl, classifier.class_rotations)
    return aligned_kmeans(means, ells, n_classes, rng)
