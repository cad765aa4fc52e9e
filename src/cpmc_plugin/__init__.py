"""CPMC channel pruning for torch-pruning and NNI.

Example:
    >>> import torch
    >>> from cpmc_plugin import CPMCPruner
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
    ...                           torch.nn.Conv2d(8, 8, 3))
    >>> pruner = CPMCPruner(net, torch.randn(1, 3, 16, 16), flops_reduction=0.3,
    ...                     ignored_layers=[net[2]])
    >>> pruner.step()
    >>> net[0].out_channels < 8
    True
"""

from importlib.metadata import PackageNotFoundError, version

from .auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers, combined_loss
from .bn_fista import BNFISTARegularizer
from .budget import UnreachableBudgetError
from .functional import NORMALIZERS, combine_criteria, normalize
from .importance import CPMCImportance
from .io import load_pruned, save_pruned
from .oicsr import OICSRImportance, OICSRRegularizer
from .presets import CPMCPreset, get_preset, list_presets
from .pruner import CPMCPruner
from .report import LayerChannels, PruneReport
from .sparse import SPARSE_METHODS, SparseRegularizer, make_regularizer
from .ssr import SSRImportance, SSRRegularizer

try:
    __version__ = version("cpmc-plugin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "NORMALIZERS",
    "SPARSE_METHODS",
    "AuxiliaryClassifiers",
    "BNFISTARegularizer",
    "CPMCImportance",
    "CPMCPreset",
    "CPMCPruner",
    "LayerChannels",
    "OICSRImportance",
    "OICSRRegularizer",
    "PruneReport",
    "SSRImportance",
    "SSRRegularizer",
    "SparseRegularizer",
    "UnreachableBudgetError",
    "__version__",
    "attach_auxiliary_classifiers",
    "combined_loss",
    "combine_criteria",
    "get_preset",
    "list_presets",
    "load_pruned",
    "make_regularizer",
    "normalize",
    "save_pruned",
]
