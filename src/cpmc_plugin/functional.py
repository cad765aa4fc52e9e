"""Moved to :mod:`cpmc_plugin.core.cpmc`; this path stays for existing imports."""

from .core.cpmc import (
    NORMALIZERS,
    Normalizer,
    channel_norm,
    combine_criteria,
    normalize,
    validate_criterion_options,
)

__all__ = [
    "NORMALIZERS",
    "Normalizer",
    "channel_norm",
    "combine_criteria",
    "normalize",
    "validate_criterion_options",
]
