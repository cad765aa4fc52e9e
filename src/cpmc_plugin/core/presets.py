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
    >>> family_of("ResNet56"), family_of("tv:vgg16_bn"), family_of("tiny-densenet")
    ('resnet', 'vgg', 'densenet')
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry

__all__ = [
    "CPMCPreset",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "PRESETS",
    "family_of",
    "get_preset",
    "list_presets",
]


@dataclass(frozen=True)
class CPMCPreset:
    """Weights of the parameter (alpha) and FLOPs (beta) criteria for one family."""

    name: str
    alpha: float
    beta: float
    measured_on: str


#: the measured presets, by family name (exact names: ``get_preset("VGG")`` is unknown)
PRESETS: Registry[CPMCPreset] = Registry("preset", fold_case=False)
for _preset in (
    CPMCPreset("vgg", alpha=0.1, beta=0.25, measured_on="VGG-style CNN, sklearn digits"),
    # the cost criteria did not help the ResNet: weight value alone tied for best
    CPMCPreset("resnet", alpha=0.0, beta=0.0, measured_on="ResNet-20-style, sklearn digits"),
    CPMCPreset("densenet", alpha=0.0, beta=0.5, measured_on="DenseNet-style, sklearn digits"),
):
    PRESETS.register(_preset.name, _preset)
del _preset

# the best single pair over the three families (mean recalibrated accuracy 95.38 %)
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 0.5


def list_presets() -> list[str]:
    """Names of the known presets."""
    return PRESETS.names()


def get_preset(name: str) -> CPMCPreset:
    """The preset called ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no such preset; the message lists the known ones.
    """
    return PRESETS.get(name)


def family_of(model_name: str) -> str | None:
    """The preset family of a model name (``"resnet56"`` -> ``"resnet"``), if it has one.

    Case is ignored, and so are the ``"tv:"`` (torchvision) and ``"tiny-"`` prefixes.
    """
    name = model_name.lower().removeprefix("tv:").removeprefix("tiny-")
    return next((family for family in PRESETS.names() if name.startswith(family)), None)
