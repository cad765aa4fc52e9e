"""``cpmc-prune report``: the paper's table, channels per layer, accuracy vs prune rate.

Writes ``report.json`` (every number), ``channels.png`` (output channels of every
conv/linear layer, baseline vs final: the paper's Fig. 5) and ``prune_rate.png``
(accuracy without fine-tuning against the FLOPs prune rate, one line per criterion:
Fig. 6). For the curve, copies of the baseline are pruned with each criterion to each
rate through :class:`~cpmc_plugin.CPMCPruner`'s exact budget, and their BatchNorm
statistics re-measured on 20 training batches (no weight changes); the JSON also
holds the accuracy before that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch_pruning as tp  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ..criteria import needs_gradients  # noqa: E402
from .checkpoint import Checkpoint  # noqa: E402
from .training import accuracy, recalibrate_bn  # noqa: E402

__all__ = ["layer_channels", "table", "write_report"]

CPU = torch.device("cpu")


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by name."""
    return {
        name: int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


def _row(name: str, acc: float, params: int, macs: int, base: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": name,
        "accuracy": acc,
        "params": params,
        "params_reduction": 1 - params / base["params"],
        "macs": macs,
        "macs_reduction": 1 - macs / base["macs"],
    }


def table(summary: dict[str, Any]) -> str:
    """The paper's columns: Acc, Params, Prr, FLOPs, Frr (against the baseline)."""
    lines = [
        "| model | Acc | Params | Prr | FLOPs (MACs) | Frr |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        prr, frr = 100 * r["params_reduction"], 100 * r["macs_reduction"]
        lines.append(
            f"| {r['model']} | {100 * r['accuracy']:.2f} % | {r['params']:,} | {prr:.1f} % "
            f"| {r['macs']:,} | {frr:.1f} % |"
        )
    return "\n".join(lines)


def _plot_channels(before: dict[str, int], after: dict[str, int], path: Path) -> None:
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(names)), 3.5))
    xs = range(len(names))
    ax.bar(xs, [before[n] for n in names], color="#c8c8c8", label="baseline")
    ax.bar(xs, [after.get(n, 0) for n in names], color="#1f77b4", label="pruned")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title("Channels per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curve(curve: dict[str, list[tuple[float, float]]], base_acc: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for criterion, points in curve.items():
        ax.plot(
            [100 * r for r, _ in points], [100 * a for _, a in points], marker="o", label=criterion
        )
    ax.axhline(100 * base_acc, color="grey", linestyle="--", label="baseline")
    ax.set_xlabel("FLOPs prune rate (%)")
    ax.set_ylabel("accuracy, no fine-tuning (%)")
    ax.set_title("BN statistics re-measured, weights untouched", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    baseline: Checkpoint,
    final: Checkpoint,
    out: Path,
    *,
    train: Any,
    test: Any,
    criteria: Sequence[str],
    rates: Sequence[float],
    prune: Callable[..., Any],
) -> dict[str, Any]:
    """Measure, write ``report.json`` and the two plots; return the summary and paths."""
    out.mkdir(parents=True, exist_ok=True)
    base_model, final_model = baseline.build(), final.build()
    base_macs, base_params = tp.utils.count_ops_and_params(base_model, baseline.example_inputs)
    macs, params = tp.utils.count_ops_and_params(final_model, final.example_inputs)
    base = {"params": int(base_params), "macs": int(base_macs)}
    base_acc = accuracy(base_model, test, CPU)
    rows = [
        _row(f"{baseline.model_name} (baseline)", base_acc, base["params"], base["macs"], base),
        _row(
            f"{final.model_name} (final)",
            accuracy(final_model, test, CPU),
            int(params),
            int(macs),
            base,
        ),
    ]
    batch = next(iter(train))
    curve: dict[str, list[tuple[float, float]]] = {}
    raw_curve: dict[str, list[tuple[float, float]]] = {}
    jobs = [(c, r) for c in criteria for r in rates]
    for criterion, rate in tqdm(jobs, desc="prune-rate curve", leave=False):
        model = baseline.build().eval()
        prune(
            model,
            baseline,
            criterion,
            flops_reduction=rate,
            grad_batch=batch if needs_gradients(criterion) else None,
        )
        raw = accuracy(model, test, CPU)
        recalibrate_bn(model, train)  # statistics only: no weight changes, no fine-tuning
        curve.setdefault(criterion, []).append((rate, accuracy(model, test, CPU)))
        raw_curve.setdefault(criterion, []).append((rate, raw))
    before, after = layer_channels(base_model), layer_channels(final_model)
    summary = {
        "model": baseline.model_name,
        "dataset": baseline.dataset,
        "rows": rows,
        "layers": [{"name": n, "before": before[n], "after": after.get(n, 0)} for n in before],
        "prune_rate_curve": {
            c: [{"rate": r, "accuracy": a} for r, a in p] for c, p in curve.items()
        },
        "metrics": final.metrics,
    }
    paths = [out / "report.json", out / "channels.png", out / "prune_rate.png"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    _plot_channels(before, after, paths[1])
    _plot_curve(curve, base_acc, paths[2])
    return {"summary": summary, "paths": paths}
