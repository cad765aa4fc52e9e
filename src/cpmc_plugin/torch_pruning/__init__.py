"""The torch-pruning adapter: the only folder of cpmc-plugin that imports torch-pruning.

Other folders reach the host through the modules here, e.g. its types through
:mod:`cpmc_plugin.torch_pruning.host` and the root-index map through
:mod:`cpmc_plugin.torch_pruning.graph.indexing`. Import a name from the module that
defines it. This ``__init__`` stays lazy (PEP 562): ``_EXPORTS`` maps a public name
to the module that defines it, imported on first access.
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

#: public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "CPMCImportance": ".importance",
    "CPMCPruner": ".pruner",
    "load_pruned": ".history",
    "Plan": ".planning.plan",
    "plan_budget": ".oneshot",
    "save_pruned": ".history",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
