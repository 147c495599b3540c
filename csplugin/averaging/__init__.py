"""Class averaging toolkit: ASPIRE's architecture, fed by stored cryoSPARC/RELION classes.

A :class:`ClassAvgSource` combines a classifier (:class:`Class2D`), a class selector
(:class:`ClassSelector`) and an averager (:class:`Averager2D`); image stackers
(:mod:`csplugin.engines.stackers`) and image quality functions are pluggable parts.

>>> import csplugin
>>> from csplugin.averaging import DefaultClassAvgSource
>>> src = csplugin.open_particles("J3_020_particles.cs")          # doctest: +SKIP
>>> avgs = DefaultClassAvgSource(src)                              # doctest: +SKIP
>>> best = avgs.images[:10]         # (10, L, L): the 10 tightest classes  # doctest: +SKIP
>>> avgs.save("out", n=10)                                         # doctest: +SKIP

Data flow (all lazy)::

    src ─► classifier.classify() ─► ClassTable (indices, refl, distances: [class][member])
        ─► class_selector.select(table) ─► selection_indices (best first; may shrink n)
        ─► images[k] = averager.average(members of row selection_indices[k])

Conventions: particle rows are 0-based positions in ``src``; alignments are csplugin's
internal ones (:mod:`csplugin.core.conventions`: the aligned member is
``A(q) = P_M(R(-θ) q - s)``, θ radians, s pixels, ``P_M`` the mirrored image when the
member's reflection flag is set). Averages are stacked per pixel.

Modules: :mod:`~csplugin.averaging.classes` (the class table),
:mod:`~csplugin.averaging.classifiers`, :mod:`~csplugin.averaging.selectors`,
:mod:`~csplugin.averaging.quality`, :mod:`~csplugin.averaging.averagers` (base and stored),
:mod:`~csplugin.averaging.search_averagers` (BFR, BFSR, Reddy–Chatterji) with its kernels in
:mod:`~csplugin.averaging.search_kernels`, :mod:`~csplugin.averaging.sources` and
:mod:`~csplugin.averaging.selection` (``csplugin class-averages --select``).
"""

from csplugin.averaging.averagers import AligningAverager2D, Averager2D, StoredAlignmentAverager2D
from csplugin.averaging.classes import ClassTable, Ragged
from csplugin.averaging.classifiers import Class2D, PrecomputedClass2D, StoredClass2D
from csplugin.averaging.quality import (
                                          BandedSNRImageQualityFunction,
                                          BandpassImageQualityFunction,
                                          BumpWeightedVarianceImageQualityFunction,
                                          ImageQualityFunction,
                                          RampWeightedVarianceImageQualityFunction,
                                          VarianceImageQualityFunction,
                                          WeightedImageQualityMixin,
)
from csplugin.averaging.rir.classifier import RIRClass2D
from csplugin.averaging.search_averagers import (
                                          BFRAverager2D,
                                          BFSRAverager2D,
                                          BFSReddyChatterjiAverager2D,
                                          ReddyChatterjiAverager2D,
                                          SearchingAverager2D,
)
from csplugin.averaging.selectors import (
                                          SELECTIONS,
                                          ClassSelector,
                                          DistanceClassSelector,
                                          DistanceWithRepulsionClassSelector,
                                          GlobalClassSelector,
                                          GlobalVarianceClassSelector,
                                          GlobalWithRepulsionClassSelector,
                                          GreedyClassRepulsionMixin,
                                          NeighborVarianceClassSelector,
                                          NeighborVarianceWithRepulsionClassSelector,
                                          RandomClassSelector,
                                          RandomWithRepulsionClassSelector,
                                          TopClassSelector,
                                          TopWithRepulsionClassSelector,
                                          make_selector,
)
from csplugin.averaging.sources import (
                                          ClassAvgSource,
                                          DebugClassAvgSource,
                                          DefaultClassAvgSource,
                                          SavedAverages,
)
from csplugin.engines.stackers import (
                                          ImageStacker,
                                          MeanImageStacker,
                                          MedianImageStacker,
                                          SigmaRejectionImageStacker,
                                          WinsorizedImageStacker,
)

__all__ = [
    # sources
    "ClassAvgSource", "DebugClassAvgSource", "DefaultClassAvgSource", "SavedAverages",
    # classification
    "ClassTable", "Ragged", "Class2D", "StoredClass2D", "PrecomputedClass2D", "RIRClass2D",
    # selection
    "ClassSelector", "TopClassSelector", "RandomClassSelector",
    "NeighborVarianceClassSelector", "DistanceClassSelector", "GreedyClassRepulsionMixin",
    "GlobalClassSelector", "GlobalVarianceClassSelector", "TopWithRepulsionClassSelector",
    "RandomWithRepulsionClassSelector", "NeighborVarianceWithRepulsionClassSelector",
    "DistanceWithRepulsionClassSelector", "GlobalWithRepulsionClassSelector", "SELECTIONS",
    "make_selector",
    # quality
    "ImageQualityFunction", "VarianceImageQualityFunction", "BandedSNRImageQualityFunction",
    "BandpassImageQualityFunction", "WeightedImageQualityMixin",
    "RampWeightedVarianceImageQualityFunction", "BumpWeightedVarianceImageQualityFunction",
    # averaging
    "Averager2D", "AligningAverager2D", "StoredAlignmentAverager2D", "SearchingAverager2D",
    "BFRAverager2D", "BFSRAverager2D", "ReddyChatterjiAverager2D",
    "BFSReddyChatterjiAverager2D",
    # stackers (csplugin.engines.stackers, shared with csplugin class-averages)
    "ImageStacker", "MeanImageStacker", "MedianImageStacker", "SigmaRejectionImageStacker",
    "WinsorizedImageStacker",
]
