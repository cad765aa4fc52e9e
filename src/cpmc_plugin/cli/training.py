"""Moved to :mod:`cpmc_plugin.training`; this path stays for existing imports."""

from ..training import Distributed, accuracy, distributed, fit, recalibrate_bn

__all__ = ["Distributed", "accuracy", "distributed", "fit", "recalibrate_bn"]
