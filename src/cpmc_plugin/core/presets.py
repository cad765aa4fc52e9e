"""Per-family CPMC weights (alpha for parameters, beta for FLOPs).

The paper tunes alpha and beta per model family but its values were lost. The
values below were chosen by ``benchmarks/select_presets.py`` (see
``docs/benchmarks.md`` for the command, machine, date and the full grid): for
each family, the (alpha, beta) with the best accuracy *without fine-tuning*
after a one-shot 50 % FLOPs prune of a small trained model and BN
recalibration, averaged over three training seeds. The default (alpha=0.1,
beta=0.5) is the single pair with the best mean over the three families. They are
a starting point, not a law: re-run the benchmark on your own model.

Example:
    >>> get_preset("resnet").name
    'resnet'
    >>> sorted(list_presets())
    ['densenet', 'resnet', 'vgg']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CPMCPreset", "DEFAULT_ALPHA", "DEFAULT_BETA", "get_preset", "list_presets"]


@dataclass(frozen=True)
class CPMCPreset:
    """Weights of the parameter (alpha) and FLOPs (beta) criteria for one family."""

    name: str
    alpha: float
    beta: float
    measured_on: str


_PRESETS: dict[str, CPMCPreset] = {
    preset.name: preset
    for preset in (
        CPMCPreset("vgg", alpha=0.1, beta=0.25, measured_on="VGG-style CNN, sklearn digits"),
        # the cost criteria did not help the ResNet: weight value alone tied for best
        CPMCPreset("resnet", alpha=0.0, beta=0.0, measured_on="ResNet-20-style, sklearn digits"),
        CPMCPreset("densenet", alpha=0.0, beta=0.5, measured_on="DenseNet-style, sklearn digits"),
    )
}

# the best single pair over the three families (mean recalibrated accuracy 95.38 %)
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 0.5


def list_presets() -> list[str]:
    """Names of the known presets."""
    return list(_PRESETS)


def get_preset(name: str) -> CPMCPreset:
    """The preset called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in _PRESETS)
        raise ValueError(f"unknown preset {name!r}; known presets: {known}") from None
