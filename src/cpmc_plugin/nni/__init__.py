"""CPMC for NNI 3.0: a pruner, a speedup that works on current torch, pruners by name.

Needs NNI (``pip install "cpmc-plugin[nni]"``).

- :class:`CPMCPruner`: CPMC as a subclass of NNI's ``Pruner`` (``compress()`` returns
  ``(model, masks)`` in NNI's format).
- :func:`speedup`: shrink a model physically from NNI masks.
- :func:`build_pruner` / :func:`list_pruners` / :func:`register_pruner`: choose a
  pruner by name, e.g. from ``nni.get_next_parameter()`` in an NNI experiment.
"""

from __future__ import annotations

try:
    import nni  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("cpmc_plugin.nni needs NNI 3.0: pip install 'cpmc-plugin[nni]'") from error

from .pruner import CPMCPruner
from .registry import build_pruner, list_pruners, register_pruner
from .speedup import speedup

__all__ = ["CPMCPruner", "build_pruner", "list_pruners", "register_pruner", "speedup"]
