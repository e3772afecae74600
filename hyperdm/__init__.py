"""hyperdm: Hyperbolic Dataset Distillation (HDD) for PyTorch.

Swap the MMD line of distribution-matching distillation for :class:`HyperbolicMatcher`.
Curvature convention: geoopt's ``k > 0`` (points satisfy ``<x,x>_L = -k``; curvature
``-1/k``), the value printed in the HDD paper's "K" column. :class:`StableLorentz` is
``geoopt.Lorentz`` with the same cancellation-free forms, for geoopt's parameters and optimizers.
"""

from . import functional, lorentz, pruning
from .functional import hyperbolic_matching_loss, mmd_matching_loss
from .manifold import StableLorentz
from .matchers import HyperbolicMatcher, MMDMatcher

__version__ = "0.1.0"

__all__ = [
    "HyperbolicMatcher",
    "MMDMatcher",
    "StableLorentz",
    "hyperbolic_matching_loss",
    "mmd_matching_loss",
    "functional",
    "lorentz",
    "pruning",
    "__version__",
]
