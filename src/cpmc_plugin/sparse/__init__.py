"""The sparse-training regularizers, one family: OICSR, SSR, BN-FISTA, auxiliary classifiers.

Each regularizer fits the loop described in :mod:`cpmc_plugin.sparse.factory`, and
:func:`make_regularizer` builds one by name. Graph work (dependency groups, channel
removal, bias folding) goes through :mod:`cpmc_plugin.torch_pruning`; this folder
never imports torch-pruning itself.
"""

from .auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers, combined_loss
from .bn_fista import BNFISTARegularizer
from .factory import SPARSE, SPARSE_METHODS, SparseMethod, make_regularizer
from .oicsr import OICSRImportance, OICSRRegularizer
from .protocol import SparseRegularizer
from .ssr import SSRImportance, SSRRegularizer

__all__ = [
    "SPARSE",
    "SPARSE_METHODS",
    "AuxiliaryClassifiers",
    "BNFISTARegularizer",
    "OICSRImportance",
    "OICSRRegularizer",
    "SSRImportance",
    "SSRRegularizer",
    "SparseMethod",
    "SparseRegularizer",
    "attach_auxiliary_classifiers",
    "combined_loss",
    "make_regularizer",
]
