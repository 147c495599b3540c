"""Synthetic data with known answers, for the demo, the tests and the benchmarks.

* :mod:`~csplugin.synthetic.jobs`: a small cryoSPARC 2D-classification project (stacks,
  ``.cs`` + passthrough, the same particles as a RELION 3.1 ``.star``) of Gaussian-blob
  classes at known angles and shifts;
* :mod:`~csplugin.synthetic.views`: projections of an asymmetric atom volume at random 3D
  views (the RIR classifier's data);
* :mod:`~csplugin.synthetic.metadata`: metadata of many particles without stacks (scale).
"""

from csplugin.synthetic.jobs import GaussianModel, SyntheticJob, class_models, make_job, render

__all__ = ["GaussianModel", "SyntheticJob", "class_models", "make_job", "render"]
