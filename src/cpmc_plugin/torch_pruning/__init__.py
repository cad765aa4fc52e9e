"""The torch-pruning adapter: the only folder of cpmc-plugin that imports torch-pruning.

Other folders reach the host through the modules here, e.g. its types through
:mod:`cpmc_plugin.torch_pruning.host` and the root-index map through
:mod:`cpmc_plugin.torch_pruning.indexing`. Import a name from the module that
defines it. This ``__init__`` stays lazy (PEP 562): ``_EXPORTS`` maps a public name
to the module that defines it, imported on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "CPMCImportance": ".importance",
    "CPMCPruner": ".pruner",
    "CRITERIA": ".criteria",
    "load_pruned": ".history",
    "make_importance": ".criteria",
    "needs_gradients": ".criteria",
    "Plan": ".planning",
    "plan_budget": ".planning",
    "save_pruned": ".history",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
