"""Moved to :mod:`cpmc_plugin.core.presets`; this path stays for existing imports."""

from .core.presets import DEFAULT_ALPHA, DEFAULT_BETA, CPMCPreset, get_preset, list_presets

__all__ = ["CPMCPreset", "DEFAULT_ALPHA", "DEFAULT_BETA", "get_preset", "list_presets"]
