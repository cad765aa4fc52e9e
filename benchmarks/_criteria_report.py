"""The tables of ``criteria.py``: per model, mean ranks, the goal check, latency, phases.

Imported by ``criteria.py``; ``python benchmarks/criteria.py --report-only`` rebuilds
the markdown from a result file without running anything.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from typing import Any

__all__ = ["goal_table", "mean_ranks", "model_table", "report"]

ACC_COLUMNS = ("acc_no_ft", "acc_bn_recal", "acc_ft_mean")
#: torch-pruning's own criteria: the "host" side of the goal
HOST_CRITERIA = ("l1", "l2", "bn-scale", "taylor", "lamp", "random")
#: CPMC's criteria, none of which may rank below random
CPMC_CRITERIA = ("cpmc-auto", "cpmc", "cpmc-default", "cpmc-a")


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


_DIGITS = {"params_reduction": 1, **dict.fromkeys(ACC_COLUMNS, 2)}


def shown(row: dict[str, Any], col: str) -> float:
    """The value as the table shows it (percent, rounded), so that ties are visible ties."""
    scale = 100.0 if col == "params_reduction" else 1.0
    return round(scale * row[col], _DIGITS[col])


def _bold_if(text: str, best: bool) -> str:
    return f"**{text}**" if best else text


def model_table(result: dict[str, Any]) -> str:
    b = result["baseline"]
    seeds = result["finetune_seeds"]
    ft = f"acc FT (mean ± std, {len(seeds)} seeds)" if len(seeds) > 1 else "acc FT"
    head = "| rate | criterion | MACs red. | params red. | acc no-FT | acc BN-recal |"
    head += f" {ft} |" if seeds else ""
    lines = [
        f"### {result['model']} (family {result['family']})",
        "",
        f"Baseline: {b['acc']:.2f} % test accuracy"
        + (f" after {b['epochs']} epochs" if "epochs" in b else "")
        + f", {b['macs'] / 1e6:.2f} M MACs, "
        f"{b['params'] / 1e6:.3f} M params. Accuracies in %, best per rate in bold.",
        "",
        head,
        "|---:|---|---:|---:|---:|---:|" + ("---:|" if seeds else ""),
    ]
    for rate in result["rates"]:
        rows = [r for r in result["rows"] if r["rate"] == rate]
        ok = [r for r in rows if "error" not in r]
        best = {
            col: max((shown(r, col) for r in ok if r.get(col) is not None), default=None)
            for col in (*ACC_COLUMNS, "params_reduction")
        }
        for r in rows:
            if "error" in r:
                lines.append(f"| {rate:.0%} | {r['criterion']} | failed: {r['error']} |")
                continue
            cells = {
                col: _bold_if(
                    "n/a"
                    if r.get(col) is None
                    else f"{shown(r, col):.{_DIGITS[col]}f}"
                    + (" %" if col == "params_reduction" else ""),
                    r.get(col) is not None and shown(r, col) == best[col],
                )
                for col in best
            }
            line = (
                f"| {rate:.0%} | {r['criterion']} | {100 * r['macs_reduction']:.1f} % "
                f"| {cells['params_reduction']} | {cells['acc_no_ft']} "
                f"| {cells['acc_bn_recal']} |"
            )
            if seeds:
                spread = f" ± {r['acc_ft_std']:.2f}" if r["acc_ft_std"] is not None else ""
                line += f" {cells['acc_ft_mean']}{spread} |"
            lines.append(line)
    return "\n".join(lines)


def mean_ranks(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean rank (1 = best, ties share the mean rank) of each criterion over the rates."""
    ranks: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rate in result["rates"]:
        rows = [r for r in result["rows"] if r["rate"] == rate and "error" not in r]
        for col in ACC_COLUMNS:
            scored = [(r["criterion"], r[col]) for r in rows if r.get(col) is not None]
            for name, value in scored:
                better = sum(v > value for _, v in scored)
                ties = sum(v == value for _, v in scored)
                ranks[name][col].append(better + (ties + 1) / 2)
    return {
        name: {col: statistics.fmean(v) for col, v in cols.items()} for name, cols in ranks.items()
    }


def rank_table(result: dict[str, Any]) -> str:
    ranks = mean_ranks(result)
    cols = [c for c in ACC_COLUMNS if any(c in r for r in ranks.values())]
    names = {"acc_no_ft": "no-FT", "acc_bn_recal": "BN-recal", "acc_ft_mean": "FT (mean)"}
    lines = [
        f"Mean rank of each criterion over the rates of {result['model']} (1 = best of "
        f"{len(ranks)}):",
        "",
        "| criterion | " + " | ".join(names[c] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, r in sorted(ranks.items(), key=lambda kv: kv[1].get(cols[-1], 0.0)):
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(c), 1) for c in cols) + " |")
    return "\n".join(lines)


def latency_table(results: list[dict[str, Any]], threads: int) -> str:
    lines = [
        f"CPU latency, median ms per forward pass, {threads} thread(s), eval mode, inference_mode:",
        "",
        "| model | rate | pruned by | MACs speed-up | batch | baseline ms | pruned ms "
        "| measured speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for r in result["latency"]:
            lines.append(
                f"| {result['model']} | {r['rate']:.0%} | {r['label']} "
                f"| x{r['macs_speedup']:.2f} | {r['batch']} | {r['base_ms']:.2f} "
                f"| {r['pruned_ms']:.2f} | x{r['speedup']:.2f} |"
            )
    return "\n".join(lines)


def phase_table(seconds: dict[str, dict[str, float]]) -> str:
    order = ["load", "baseline_train", "prune", "evaluate", "bn_recal", "finetune", "latency"]
    lines = [
        "Wall-clock seconds per phase:",
        "",
        "| model | " + " | ".join(order) + " | all |",
        "|---|" + "---:|" * (len(order) + 1),
    ]
    for model, phases in seconds.items():
        cells = [fmt(phases.get(p, 0.0), 0) for p in order]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {sum(phases.values()):.0f} |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], seconds: dict, args: argparse.Namespace) -> str:
    parts = []
    for result in results:
        parts += [model_table(result), rank_table(result)]
    if any(goal_cells(r) for r in results):
        parts.append(goal_table(results))
    if any(r["latency"] for r in results):
        parts.append(latency_table(results, args.threads))
    parts.append(phase_table(seconds))
    return "\n\n".join(parts)


def _ft(row: dict[str, Any] | None) -> tuple[float | None, float]:
    if row is None or "error" in row or row.get("acc_ft_mean") is None:
        return None, 0.0
    return row["acc_ft_mean"], row.get("acc_ft_std") or 0.0


def goal_cells(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rate: ``cpmc-auto`` against the best host criterion, and CPMC against random.

    The goal holds at a rate when cpmc-auto's fine-tuned mean is at least the best host
    criterion's mean less one standard deviation (the larger of the two; 0 with one
    seed). Without fine-tunes, the BN-recalibrated accuracy is compared as it is.
    """
    cells = []
    for rate in result["rates"]:
        rows = {r["criterion"]: r for r in result["rows"] if r["rate"] == rate}
        auto = rows.get("cpmc-auto")
        if auto is None or "error" in auto:
            continue
        cell: dict[str, Any] = {"rate": rate}
        for measure in ("acc_bn_recal", "acc_ft_mean"):
            hosts = [
                (name, rows[name]) for name in HOST_CRITERIA
                if "error" not in rows.get(name, {"error": 1})
                and rows[name].get(measure) is not None
            ]  # fmt: skip
            if not hosts or auto.get(measure) is None:
                continue
            best_name, best = max(hosts, key=lambda nr: nr[1][measure])
            slack = 0.0
            if measure == "acc_ft_mean":
                slack = max(_ft(auto)[1], _ft(best)[1])
            random = rows.get("random")
            below_random = [
                name for name in CPMC_CRITERIA
                if name in rows and random is not None and rows[name].get(measure) is not None
                and random.get(measure) is not None and rows[name][measure] < random[measure]
            ]  # fmt: skip
            cell[measure] = {
                "auto": auto[measure],
                "best_host": best_name,
                "best_host_value": best[measure],
                "slack": slack,
                "met": auto[measure] >= best[measure] - slack,
                "cpmc_below_random": below_random,
            }
        cells.append(cell)
    return cells


def goal_table(results: list[dict[str, Any]]) -> str:
    """Markdown: where cpmc-auto meets the goal, per model and rate."""
    lines = [
        "Goal: cpmc-auto at or above the best torch-pruning criterion (fine-tuned: within one "
        "standard deviation, the larger of the two), and no CPMC criterion below random:",
        "",
        "| model | rate | measure | cpmc-auto | best host criterion | met | CPMC below random |",
        "|---|---:|---|---:|---|---|---|",
    ]
    names = {"acc_bn_recal": "BN-recal", "acc_ft_mean": "fine-tuned"}
    for result in results:
        for cell in goal_cells(result):
            for measure, name in names.items():
                c = cell.get(measure)
                if c is None:
                    continue
                slack = f" (± {c['slack']:.2f})" if c["slack"] else ""
                below = ", ".join(c["cpmc_below_random"]) or "none"
                lines.append(
                    f"| {result['model']} | {cell['rate']:.0%} | {name} | {c['auto']:.2f} "
                    f"| {c['best_host']} {c['best_host_value']:.2f}{slack} "
                    f"| {'yes' if c['met'] else '**no**'} | {below} |"
                )
    return "\n".join(lines)
