"""The ``cpmc-prune`` command line (``python -m cpmc_plugin.cli`` works too)."""

from .checkpoint import Checkpoint
from .commands import build_parser, main

__all__ = ["Checkpoint", "build_parser", "main"]
