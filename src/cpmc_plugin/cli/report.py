"""``cpmc-prune report``: the paper's table, channels per layer, accuracy vs prune rate.

Writes ``report.json`` (every number, and the settings that produced them),
``channels.png`` (output channels of every conv/linear layer, baseline vs final: the
paper's Fig. 5) and ``prune_rate.png`` (accuracy without fine-tuning against the FLOPs
prune rate, one line per criterion: Fig. 6). For the curve, copies of the baseline
are pruned with each criterion, with exactly the settings its label names, to each
rate through :class:`~cpmc_plugin.CPMCPruner`'s exact budget. Their BatchNorm running
statistics are then re-estimated on the same few training batches for every point (no
weight changes, no fine-tuning); the JSON holds the accuracy before that too.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ..core.torch_private import ConvNd
from ..criteria import needs_gradients  # noqa: E402
from ..torch_pruning.cost.counting import count_ops_and_params  # noqa: E402
from ..training import accuracy, recalibrate_bn  # noqa: E402
from .checkpoint import Checkpoint  # noqa: E402
from .settings import CriterionSettings  # noqa: E402

__all__ = [
    "BN_BATCHES",
    "budget_text",
    "channels_figure",
    "curve_figure",
    "layer_channels",
    "table",
    "write_report",
]

CPU = torch.device("cpu")
#: training batches the BatchNorm statistics of every curve point are re-estimated on
BN_BATCHES = 20


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by name."""
    return {
        name: int(m.out_channels if isinstance(m, ConvNd) else m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, (ConvNd, nn.Linear))  # core.layers.ROOT_TYPES
    }


def budget_text(budget: dict[str, float]) -> str:
    """``{'flops_reduction': 0.5}`` -> ``'50 % fewer FLOPs'``."""
    words = {"flops_reduction": "FLOPs", "params_reduction": "parameters"}
    return ", ".join(f"{100 * v:g} % fewer {words.get(k, k)}" for k, v in budget.items())


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


def _prune_caption(prune: dict[str, Any] | None) -> str:
    if not prune:
        return "pruning settings not recorded in the checkpoint"
    return f"pruned with {prune['label']} to {budget_text(prune['budget'])}"


def channels_figure(
    before: dict[str, int],
    after: dict[str, int],
    *,
    model: str,
    dataset: str,
    prune: dict[str, Any] | None,
) -> Figure:
    """Horizontal bars, one per layer (top to bottom in network order), baseline vs pruned."""
    names = list(before)
    fig, ax = plt.subplots(figsize=(7.0, max(3.5, 0.2 * len(names) + 1.6)))
    ys = list(range(len(names)))
    ax.barh(ys, [before[n] for n in names], color="#c8c8c8", label="baseline")
    ax.barh(ys, [after.get(n, 0) for n in names], color="#1f77b4", label="pruned")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()  # the first layer on top
    ax.set_xlabel("output channels")
    ax.set_ylabel("layer")
    ax.set_title(f"Channels per layer: {model} on {dataset}\n{_prune_caption(prune)}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def curve_figure(
    curves: Sequence[dict[str, Any]],
    base_acc: float,
    *,
    model: str,
    dataset: str,
    prune: dict[str, Any] | None,
    bn_batches: int,
) -> Figure:
    """Accuracy right after pruning against the FLOPs prune rate, one line per criterion."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for curve in curves:
        points = curve["points"]
        ax.plot(
            [100 * p["rate"] for p in points],
            [100 * p["accuracy"] for p in points],
            marker="o",
            label=curve["label"],
        )
    ax.axhline(100 * base_acc, color="grey", linestyle="--", label="baseline (not pruned)")
    if prune and "flops_reduction" in prune["budget"]:
        rate = 100 * prune["budget"]["flops_reduction"]
        ax.axvline(rate, color="grey", linestyle=":", label=f"the prune step's budget ({rate:g} %)")
    ax.set_xlabel("FLOPs prune rate (%)")
    ax.set_ylabel("test accuracy (%)")
    fig.suptitle(f"Accuracy vs FLOPs prune rate: {model} on {dataset}", fontsize=10)
    ax.set_title(
        "every criterion pruned to the same exact MACs budget by CPMCPruner; accuracy right "
        "after pruning,\nbefore any fine-tuning, BatchNorm running statistics re-estimated "
        f"on {_batches(bn_batches)}",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _batches(count: int) -> str:
    return f"{count} training batch{'' if count == 1 else 'es'}"


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _point_seed(seed: int, criterion: str, rate: float) -> int:
    """A seed for one curve point that does not depend on the other points."""
    return zlib.crc32(f"{seed}/{criterion}/{rate!r}".encode())


def write_report(
    baseline: Checkpoint,
    final: Checkpoint,
    out: Path,
    *,
    train: Any,
    test: Any,
    curve_settings: Sequence[CriterionSettings],
    rates: Sequence[float],
    seed: int = 0,
    bn_batches: int = BN_BATCHES,
) -> dict[str, Any]:
    """Measure, write ``report.json`` and the two plots; return the summary, figures, paths.

    Each point prunes a copy of the baseline with :meth:`CriterionSettings.prune`. Every
    point of the curve is seeded on its own (from ``seed``, its criterion and rate) and
    re-estimates BatchNorm statistics on the same ``bn_batches`` training batches (all of
    them, if the training set has fewer),
    so points are comparable across criteria.
    """
    out.mkdir(parents=True, exist_ok=True)
    base_model, final_model = baseline.build(), final.build()
    base_macs, base_params = count_ops_and_params(base_model, baseline.example_inputs)
    macs, params = count_ops_and_params(final_model, final.example_inputs)
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
    calibration = list(islice(iter(train), bn_batches))
    bn_batches = len(calibration)  # fewer when the training set is small: say so
    curves = [{**settings.to_dict(), "points": []} for settings in curve_settings]
    jobs = [(i, s, r) for i, s in enumerate(curve_settings) for r in rates]
    for index, settings, rate in tqdm(jobs, desc="prune-rate curve", leave=False):
        torch.manual_seed(_point_seed(seed, settings.criterion, rate))
        model = baseline.build().eval()
        settings.prune(
            model,
            baseline.example_inputs,
            flops_reduction=rate,
            grad_batch=calibration[0] if needs_gradients(settings.criterion) else None,
            calibration_data=calibration if settings.uses_training_data else None,
        )
        raw = accuracy(model, test, CPU)
        recalibrate_bn(model, calibration, batches=bn_batches)  # statistics only
        curves[index]["points"].append(
            {
                "rate": rate,
                "accuracy": accuracy(model, test, CPU),
                "accuracy_before_bn_recalibration": raw,
            }
        )
    before, after = layer_channels(base_model), layer_channels(final_model)
    pruned = final.metrics.get("pruned")
    prune_settings = None
    if isinstance(pruned, dict) and "settings" in pruned:
        prune_settings = {**pruned["settings"], "budget": pruned["budget"]}
    summary = {
        "model": baseline.model_name,
        "dataset": baseline.dataset,
        "seed": seed,
        "rows": rows,
        "prune": prune_settings,
        "layers": [{"name": n, "before": before[n], "after": after.get(n, 0)} for n in before],
        "prune_rate_curve": {
            "budget": "flops_reduction",
            "rates": list(rates),
            "accuracy": (
                "top-1 test accuracy right after pruning, before any fine-tuning; BatchNorm "
                f"running statistics re-estimated on {_batches(bn_batches)}"
            ),
            "bn_recalibration_batches": bn_batches,
            "curves": curves,
        },
        "metrics": final.metrics,
    }
    caption: dict[str, Any] = {
        "model": baseline.model_name,
        "dataset": baseline.dataset,
        "prune": prune_settings,
    }
    figures = {
        "channels.png": channels_figure(before, after, **caption),
        "prune_rate.png": curve_figure(curves, base_acc, bn_batches=bn_batches, **caption),
    }
    paths = [out / "report.json", out / "channels.png", out / "prune_rate.png"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    titles = {name: _titles(fig) for name, fig in figures.items()}
    for name, fig in figures.items():
        _save(fig, out / name)
    return {"summary": summary, "paths": paths, "titles": titles}


def _titles(fig: Figure) -> dict[str, Any]:
    """The texts of a figure that say what it shows (for tests and the CLI's output)."""
    ax = fig.axes[0]
    legend = ax.get_legend()
    return {
        "suptitle": fig.get_suptitle(),
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(),
        "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
        "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
    }
