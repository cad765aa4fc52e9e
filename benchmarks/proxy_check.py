"""Does calibration's proxy predict? Every candidate of the grid, fine-tuned.

For one model and one FLOPs rate (default: ResNet-20 on Fashion-MNIST at 50 %),
``calibrate_importance`` scores every candidate of ``DEFAULT_CANDIDATES`` by its proxy
(held-out accuracy and loss on the training split after BatchNorm re-estimation, the
first ``--calibration-batches`` batches of 128 of the BN-recalibration images that
``criteria.py`` uses). Then every candidate's prune is applied to a copy of the
baseline exactly as ``criteria.py`` prunes a cell, BatchNorm is re-measured, and the
model is evaluated on the test split and fine-tuned once with ``criteria.py``'s fixed
schedule (``--finetune-*``, seed ``--seed``). Candidates whose plans coincide share one
evaluation.

Reports the Spearman rank correlation of the proxy (accuracy, and minus the loss) with
the fine-tuned and the BN-recalibrated test accuracy, and where the proxy's pick ranks
among the fine-tuned candidates (top quarter or not). Every finished candidate is
written to ``--out`` at once; ``--resume`` keeps them.

``--proxy-steps N`` calibrates with ``finetune_steps=N`` (``--proxy-top``,
``--proxy-lr``): the best plans of the first pass are re-scored after N SGD steps.
Their fine-tuned test accuracies do not depend on the proxy, so ``--labels-from``
takes them from an earlier run's JSON (each candidate by its options) and only the
calibration runs; the output records which file and commit they came from.

The data, the baseline (and its cache) and the fine-tune come from ``criteria.py``:
every option of that script that sets them is accepted here too, with its defaults.
The published run (docs/benchmarks.md)::

    python benchmarks/proxy_check.py --model resnet20 --rate 0.5 --train-subset 0 \\
        --test-subset 0 --epochs 10 --finetune-epochs 1 --finetune-subset 20000 \\
        --finetune-lr 0.01 --calib-batches 20 --threads 2 --resume
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import criteria as bench
import torch
import torch_pruning as tp
from _common import RESULTS, log, provenance, write_json

from cpmc_plugin import CPMCImportance, calibrate_importance
from cpmc_plugin.torch_pruning.calibration.grid import DEFAULT_CANDIDATES
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from cpmc_plugin.training import Distributed

DEFAULT_OUT = RESULTS / "proxy_check.json"


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); ``None`` if undefined.

    Example:
        >>> spearman([1, 2, 3], [10, 30, 20])
        0.5
    """
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else None


def _proxy_fields(candidate: Any) -> dict[str, Any]:
    return {
        "proxy_accuracy": candidate.accuracy,
        "proxy_loss": candidate.loss,
        "proxy_finetuned_loss": candidate.finetuned_loss,
        "proxy_finetuned_accuracy": candidate.finetuned_accuracy,
    }


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument("--model", type=bench.known_model, default="resnet20")
    own.add_argument("--rate", type=bench.rate, default=0.5)
    own.add_argument("--seed", type=int, default=0, help="fine-tune seed")
    own.add_argument("--calibration-batches", type=int, default=8, help="of 128 images")
    own.add_argument("--limit", type=int, default=0, help="first N candidates only (0: all)")
    own.add_argument("--out", type=Path, default=DEFAULT_OUT)
    own.add_argument("--resume", action="store_true", help="keep the candidates in --out")
    own.add_argument("--proxy-steps", type=int, default=0, help="calibration finetune_steps")
    own.add_argument("--proxy-top", type=int, default=8, help="calibration finetune_top")
    own.add_argument("--proxy-lr", type=float, default=0.01, help="calibration finetune_lr")
    own.add_argument(
        "--labels-from", type=Path, default=None, help="candidates' fine-tuned accuracies"
    )
    mine, rest = own.parse_known_args(argv)
    shared = bench.parse_args([*rest, "--models", mine.model, "--out", str(mine.out)])
    if mine.calibration_batches < 2 or mine.calibration_batches > shared.calib_batches:
        own.error("--calibration-batches must lie in [2, --calib-batches]")
    return mine, shared


def main(argv: list[str] | None = None) -> dict[str, Any]:
    mine, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    env = Distributed(0, 1, torch.device("cuda" if cuda else "cpu"))
    data = bench.load_data(args)
    base, trained = bench.baseline(mine.model, data, args, env)
    example = data["example"]
    base_acc = bench.percent(base, data["test"], env.device)
    previous: dict[str, Any] = {}
    labels: dict[str, Any] | None = None
    if mine.labels_from is not None:
        earlier = json.loads(mine.labels_from.read_text())
        previous = {r["key"]: r for r in earlier.get("candidates", [])}
        labels = {"file": str(mine.labels_from), "provenance": earlier.get("provenance")}
    if mine.resume and mine.out.exists():
        previous |= {r["key"]: r for r in json.loads(mine.out.read_text()).get("candidates", [])}
    started = time.perf_counter()
    model_for_calibration = copy.deepcopy(base)
    candidates = DEFAULT_CANDIDATES[: mine.limit] if mine.limit else DEFAULT_CANDIDATES
    calibrated = calibrate_importance(
        model_for_calibration,
        example,
        data["calib"],
        flops_reduction=mine.rate,
        ignored_layers=[model_for_calibration.classifier],
        candidates=candidates,
        batches=mine.calibration_batches,
        finetune_steps=mine.proxy_steps,
        finetune_top=mine.proxy_top,
        finetune_lr=mine.proxy_lr,
    )
    report = calibrated.calibration
    assert report is not None
    calibrate_s = time.perf_counter() - started
    out: dict[str, Any] = {
        "provenance": provenance(str(env.device)),
        "options": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(mine).items()},
            "finetune_epochs": args.finetune_epochs,
            "finetune_lr": args.finetune_lr,
            "finetune_subset": args.finetune_subset,
            "sizes": data["sizes"],
        },
        "baseline": {**trained, "acc": base_acc},
        "calibration": report.as_dict(),
        "calibrate_s": round(calibrate_s, 2),
        "labels_from": labels,
        "candidates": [],
    }
    ctx = {"phases": bench.Phases(), "model": mine.model, "env": env, "data": data}
    for i, candidate in enumerate(report.candidates):
        key = json.dumps(candidate.options, sort_keys=True)
        if key in previous:  # the proxy's scores are this run's, the test accuracies kept
            out["candidates"].append(
                {
                    **previous[key],
                    "index": i,
                    **_proxy_fields(candidate),
                    "same_plan_as": candidate.same_plan_as,
                }
            )
            continue
        same = candidate.same_plan_as
        if same is not None and same < len(out["candidates"]):
            row = {**out["candidates"][same], "key": key, "index": i, "same_plan_as": same}
            row["options"] = candidate.options
            out["candidates"].append(row)
            write_json(mine.out, out)
            continue
        model = copy.deepcopy(base).eval()
        torch.manual_seed(bench.cell_seed(mine.model, "cpmc-candidate", mine.rate))
        prune_to_budget(
            model, example, CPMCImportance(example, **candidate.options), flops_reduction=mine.rate
        )
        macs, params = tp.utils.count_ops_and_params(model, example)
        bench.recalibrate(model, data["calib"], env.device)
        recal = bench.percent(model, data["test"], env.device)
        tuned = bench._finetune(model, "candidate", mine.seed, args, ctx)
        row = {
            "key": key,
            "index": i,
            "options": candidate.options,
            **_proxy_fields(candidate),
            "macs": int(macs),
            "params": int(params),
            "acc_bn_recal": recal,
            "acc_ft": tuned,
            "same_plan_as": None,
        }
        out["candidates"].append(row)
        write_json(mine.out, out)
        log(
            f"[{i + 1}/{len(report.candidates)}] {candidate.options}: proxy "
            f"{100 * (candidate.accuracy or 0):.2f} % / {candidate.loss:.4f}; test BN-recal "
            f"{recal:.2f}, FT {tuned:.2f}"
        )
    rows = out["candidates"]
    proxy_acc = [float(r["proxy_accuracy"] or 0.0) for r in rows]
    proxy_loss = [-float(r["proxy_loss"]) for r in rows]
    ft = [float(r["acc_ft"]) for r in rows]
    recal = [float(r["acc_bn_recal"]) for r in rows]
    chosen = report.chosen
    better = sum(v > ft[chosen] for v in ft)
    out["summary"] = {
        "candidates": len(rows),
        "distinct_plans": sum(r["same_plan_as"] is None for r in rows),
        "spearman_proxy_accuracy_vs_ft": spearman(proxy_acc, ft),
        "spearman_proxy_loss_vs_ft": spearman(proxy_loss, ft),
        "spearman_proxy_accuracy_vs_bn_recal": spearman(proxy_acc, recal),
        "spearman_proxy_loss_vs_bn_recal": spearman(proxy_loss, recal),
        "spearman_bn_recal_vs_ft": spearman(recal, ft),
        "chosen": chosen,
        "chosen_options": rows[chosen]["options"],
        "chosen_ft": ft[chosen],
        "chosen_rank_ft": better + 1,
        "chosen_in_top_quarter": better + 1 <= max(1, len(rows) // 4),
        "best_ft": max(ft),
        "best_ft_options": rows[ft.index(max(ft))]["options"],
        "median_ft": statistics.median(ft),
    }
    tuned = [r for r in rows if r.get("proxy_finetuned_loss") is not None]
    if tuned:
        out["summary"]["finetuned_candidates"] = len(tuned)
        out["summary"]["spearman_finetuned_loss_vs_ft_among_them"] = spearman(
            [-float(r["proxy_finetuned_loss"]) for r in tuned], [float(r["acc_ft"]) for r in tuned]
        )
    out["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(mine.out, out)
    for k, v in out["summary"].items():
        print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
