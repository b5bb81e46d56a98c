"""Global alignment: pairwise pointmaps → per-frame depth, camera-to-world pose and focal.

Data flow: :func:`driver.prepare` validates the inputs, :func:`init.init_mst` places the frames
along a maximum-confidence spanning tree, a solver (:mod:`solvers`) minimises the objective
evaluated by the fused ``_core`` kernels (:mod:`objective`), and :func:`driver.assemble` returns an
:class:`AlignResult`. :mod:`reference` is the slow PyTorch-autograd twin used by the tests.
"""

from .config import AlignConfig
from .driver import global_align
from .result import AlignResult

__all__ = ["AlignConfig", "AlignResult", "global_align"]
