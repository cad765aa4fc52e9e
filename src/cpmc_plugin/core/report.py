"""What a prune did: totals before/after and channels per layer (paper Table I, Fig. 5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LayerChannels", "PruneReport"]


@dataclass(frozen=True)
class LayerChannels:
    """Output channels of one conv/linear layer before and after pruning."""

    name: str
    kind: str
    before: int
    after: int


@dataclass(frozen=True)
class PruneReport:
    """Parameters and MACs (as ``tp.utils.count_ops_and_params`` counts them) before/after.

    Example:
        >>> r = PruneReport(params_before=100, params_after=40, macs_before=1000,
        ...                 macs_after=500, layers=())
        >>> r.params_reduction, r.macs_reduction, r.speedup
        (0.6, 0.5, 2.0)
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layers: tuple[LayerChannels, ...]

    @property
    def params_reduction(self) -> float:
        """Fraction of parameters removed (the paper's Prr / 100)."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def macs_reduction(self) -> float:
        """Fraction of MACs removed (the paper's Frr / 100)."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def speedup(self) -> float:
        """MACs before / MACs after."""
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    @property
    def channels_before(self) -> int:
        return sum(layer.before for layer in self.layers)

    @property
    def channels_after(self) -> int:
        return sum(layer.after for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), the derived ratios included."""
        data = asdict(self)
        data.update(
            params_reduction=self.params_reduction,
            macs_reduction=self.macs_reduction,
            speedup=self.speedup,
        )
        return data

    def __str__(self) -> str:
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"(-{100 * self.params_reduction:.2f} %)",
            f"MACs   {self.macs_before:,} -> {self.macs_after:,} "
            f"(-{100 * self.macs_reduction:.2f} %, {self.speedup:.2f}x)",
            f"channels {self.channels_before:,} -> {self.channels_after:,}",
        ]
        width = max((len(layer.name) for layer in self.layers), default=5)
        lines.append(f"{'layer':<{width}}  {'before':>6}  {'after':>6}")
        lines += [f"{la.name:<{width}}  {la.before:>6}  {la.after:>6}" for la in self.layers]
        return "\n".join(lines)
