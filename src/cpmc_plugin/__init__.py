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

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

if TYPE_CHECKING:  # the names as mypy and editors see them; at run time they load lazily
    from .attention.eager import eager_attention
    from .attention.options import head_options
    from .core.budget import UnreachableBudgetError
    from .core.cpmc import NORMALIZERS, combine_criteria, normalize
    from .core.presets import CPMCPreset, get_preset, list_presets
    from .core.report import LayerChannels, PruneReport
    from .sparse.auxiliary import AuxiliaryClassifiers, attach_auxiliary_classifiers, combined_loss
    from .sparse.bn_fista import BNFISTARegularizer
    from .sparse.factory import SPARSE_METHODS, make_regularizer
    from .sparse.oicsr import OICSRImportance, OICSRRegularizer
    from .sparse.protocol import SparseRegularizer
    from .sparse.ssr import SSRImportance, SSRRegularizer
    from .torch_pruning.calibration.report import CalibrationReport
    from .torch_pruning.calibration.run import calibrate_importance
    from .torch_pruning.graph.negative_concat import fixed_graphs
    from .torch_pruning.history import load_pruned, save_pruned
    from .torch_pruning.importance import CPMCImportance
    from .torch_pruning.pruner import CPMCPruner

#: public name -> the module (relative to this package) that defines it. A name is
#: imported on first access (PEP 562), so ``import cpmc_plugin.core`` loads no host.
_EXPORTS: dict[str, str] = {
    "CPMCPruner": ".torch_pruning.pruner",
    "head_options": ".attention.options",
    "eager_attention": ".attention.eager",
    "fixed_graphs": ".torch_pruning.graph.negative_concat",
    "CPMCImportance": ".torch_pruning.importance",
    "calibrate_importance": ".torch_pruning.calibration.run",
    "CalibrationReport": ".torch_pruning.calibration.report",
    "load_pruned": ".torch_pruning.history",
    "save_pruned": ".torch_pruning.history",
    "NORMALIZERS": ".core.cpmc",
    "combine_criteria": ".core.cpmc",
    "normalize": ".core.cpmc",
    "CPMCPreset": ".core.presets",
    "get_preset": ".core.presets",
    "list_presets": ".core.presets",
    "UnreachableBudgetError": ".core.budget",
    "LayerChannels": ".core.report",
    "PruneReport": ".core.report",
    "SPARSE_METHODS": ".sparse.factory",
    "make_regularizer": ".sparse.factory",
    "SparseRegularizer": ".sparse.protocol",
    "OICSRImportance": ".sparse.oicsr",
    "OICSRRegularizer": ".sparse.oicsr",
    "SSRImportance": ".sparse.ssr",
    "SSRRegularizer": ".sparse.ssr",
    "BNFISTARegularizer": ".sparse.bn_fista",
    "AuxiliaryClassifiers": ".sparse.auxiliary",
    "attach_auxiliary_classifiers": ".sparse.auxiliary",
    "combined_loss": ".sparse.auxiliary",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


try:
    __version__ = version("cpmc-plugin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "eager_attention",
    "fixed_graphs",
    "head_options",
    "NORMALIZERS",
    "SPARSE_METHODS",
    "AuxiliaryClassifiers",
    "BNFISTARegularizer",
    "CPMCImportance",
    "CPMCPreset",
    "CPMCPruner",
    "CalibrationReport",
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
    "calibrate_importance",
    "combined_loss",
    "combine_criteria",
    "get_preset",
    "list_presets",
    "load_pruned",
    "make_regularizer",
    "normalize",
    "save_pruned",
]
