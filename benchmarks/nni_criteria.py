"""CPMC against NNI's own criteria (L1 norm, FPGM) at one sparsity, through NNI 3.0.

Protocol, on the CPU:

1. Train one baseline (default: ResNet-20 on 12000 Fashion-MNIST training images, SGD
   momentum 0.9, weight decay 5e-4, one-cycle schedule, fixed seed). The trained state
   dict is cached in ``--cache-dir`` (default ``benchmarks/results/cache/``; keyed by
   data set, model, training subset, epochs and seed), so reruns skip training. Falls
   back to scikit-learn's ``digits`` if Fashion-MNIST is not installed.
2. For each pruner (``CPMCPruner``, NNI's ``L1NormPruner`` and ``FPGMPruner``, all built
   by ``cpmc_plugin.nni.build_pruner``) and each config mode, on a deep copy of the
   baseline, one config for all three pruners:

   * ``global``: ``[{"op_types": ["Conv2d"], "sparse_ratio": S, "global_group_id": "all",
     "max_sparse_ratio": 0.8}]``;
   * ``layer``: ``[{"op_types": ["Conv2d"], "sparse_ratio": S}]`` (per-layer ratio).

   The classifier is a Linear layer, so ``op_types: ["Conv2d"]`` leaves it alone. CPMC
   uses the model family's preset (``cpmc_plugin.get_preset``). The masks are recorded
   (share of output channels masked per layer: does each pruner honour ``sparse_ratio``
   and ``max_sparse_ratio``?), then ``compress()`` -> ``unwrap_model()`` ->
   ``cpmc_plugin.nni.speedup`` shrinks the model physically. A channel that a residual
   add ties to other layers is removed only if every tied layer masks it; otherwise it
   stays, with its masked weights at zero. Parameters and MACs are counted with
   ``torch_pruning.utils.count_ops_and_params`` on the shrunk model.
3. Test accuracy (full test split) of the shrunk model: right after pruning; after
   BatchNorm recalibration (running statistics reset, ``momentum=None``, one pass in
   train mode under ``no_grad`` over the first 2000 un-augmented training images);
   and after a short fine-tune from the recalibrated model (``--finetune-epochs`` over
   the training subset, SGD momentum 0.9, weight decay 5e-4, cosine from lr 0.01, the
   same for every pruner), once per fine-tune seed (mean reported).

Prints a markdown table per config mode and writes JSON (provenance, options, every
number) to ``benchmarks/results/nni_criteria.json``.

Run from the repository root (on a shared 2-core machine, one thread: about 12.5 minutes
the first time, of which about 3 train the baseline; about 10 minutes with the cache)::

    python benchmarks/nni_criteria.py
    python benchmarks/nni_criteria.py --dataset digits --epochs 10 --seeds 0   # quick
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from _common import (
    CACHE_DIR,
    RESULTS,
    cached_baseline,
    log,
    percent_correct,
    provenance,
    relative,
    shuffled,
    train_sgd,
    with_digits_fallback,
    write_json,
)
from torch.utils.data import DataLoader, Subset

from cpmc_plugin import get_preset
from cpmc_plugin.data import dataset_info, load_dataset, make_loaders
from cpmc_plugin.models import create_model
from cpmc_plugin.nni import build_pruner, speedup
from cpmc_plugin.training import recalibrate_bn

DEFAULT_OUT = RESULTS / "nni_criteria.json"
PRUNERS = ("CPMCPruner", "L1NormPruner", "FPGMPruner")
MODES = ("global", "layer")
MAX_SPARSE_RATIO = 0.8
TRAIN_LR, TRAIN_WD = 0.1, 5e-4
FT_LR, FT_WD = 0.01, 5e-4
BATCH, EVAL_BATCH, CALIB_IMAGES = 128, 500, 2000


# ---------------------------------------------------------------------------- data
def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """Train loader, test loader, calibration loader, info; digits if the set is missing."""
    loaded, name, fallback = with_digits_fallback(
        lambda name: _loaders(name, args.train_subset), args.dataset
    )
    train_loader, test_loader, info = loaded
    train_set = train_loader.dataset
    plain = load_dataset(name, train=True, augment=False)
    indices = list(train_set.indices) if isinstance(train_set, Subset) else list(range(len(plain)))
    calib = Subset(plain, indices[:CALIB_IMAGES])
    return {
        "name": name,
        "fallback_reason": fallback,
        "info": info,
        "train_set": train_set,
        "train": train_loader,
        "test": DataLoader(test_loader.dataset, batch_size=EVAL_BATCH),
        "calib": DataLoader(calib, batch_size=BATCH),
        "example": plain[indices[0]][0].unsqueeze(0),
    }


def _loaders(name: str, train_subset: int | None) -> tuple[DataLoader, DataLoader, Any]:
    size = dataset_info(name).train_size
    subset = None if train_subset is None or train_subset >= size else train_subset
    return make_loaders(name, batch_size=BATCH, train_subset=subset, seed=0)


# ---------------------------------------------------------------------------- training
def train(model: nn.Module, loader: DataLoader, epochs: int, *, seed: int, finetune: bool) -> None:
    """SGD momentum 0.9: one-cycle from scratch, cosine from lr 0.01 when fine-tuning."""
    lr, wd = (FT_LR, FT_WD) if finetune else (TRAIN_LR, TRAIN_WD)
    train_sgd(
        model,
        lambda: loader,
        epochs=epochs,
        steps_per_epoch=len(loader),
        lr=lr,
        weight_decay=wd,
        schedule="cosine" if finetune else "one-cycle",
        seed=seed,
        log_loss=True,
    )


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    return percent_correct(model, loader)


def baseline(args: argparse.Namespace, data: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    info = data["info"]
    torch.manual_seed(args.base_seed)
    model = create_model(args.model, num_classes=info.num_classes, in_channels=info.in_channels)
    size = len(data["train_set"])
    key = f"nni-{data['name']}-{args.model}-n{size}-e{args.epochs}-s{args.base_seed}"
    path = args.cache_dir / f"{key}.pt"
    started = time.perf_counter()

    def train_baseline() -> dict[str, Any]:
        log(f"training baseline {key}")
        train(model, data["train"], args.epochs, seed=args.base_seed, finetune=False)
        return {}

    cached, _ = cached_baseline(model, path, train_baseline, no_cache=args.no_cache)
    model.eval()
    return model, {
        "cache_file": relative(path),
        "loaded_from_cache": cached,
        "train_s": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------------- pruning
def config_list(mode: str, sparsity: float) -> list[dict[str, Any]]:
    config: dict[str, Any] = {"op_types": ["Conv2d"], "sparse_ratio": sparsity}
    if mode == "global":
        config.update(global_group_id="all", max_sparse_ratio=MAX_SPARSE_RATIO)
    return [config]


def mask_stats(masks: dict[str, dict[str, torch.Tensor]], mode: str, sparsity: float) -> dict:
    """Share of output channels (and weights) each layer's mask zeroes out."""
    per_layer, masked, channels, zero_weights, weights = {}, 0, 0, 0, 0
    for name, targets in masks.items():
        weight = targets.get("weight")
        if weight is None or weight.dim() < 2:  # CPMC also masks the norm layers' affine
            continue
        dead = int((~weight.flatten(1).bool().any(1)).sum())
        per_layer[name] = round(dead / weight.shape[0], 4)
        masked, channels = masked + dead, channels + weight.shape[0]
        zero_weights, weights = zero_weights + int((weight == 0).sum()), weights + weight.numel()
    cap = MAX_SPARSE_RATIO if mode == "global" else 1.0
    over = sorted(n for n, r in per_layer.items() if r > cap + 1e-9)
    off = sorted(n for n, r in per_layer.items() if abs(r - sparsity) > 0.05)
    return {
        "masked_channels": masked,
        "masked_channel_share": round(masked / channels, 4),
        "masked_weight_share": round(zero_weights / weights, 4),
        "max_layer_ratio": max(per_layer.values()),
        "min_layer_ratio": min(per_layer.values()),
        "layers_over_max_sparse_ratio": over,
        "layers_fully_masked": sorted(n for n, r in per_layer.items() if r >= 1.0),
        "layers_off_sparse_ratio": off if mode == "layer" else None,
        "per_layer_ratio": per_layer,
    }


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_one(
    name: str, base: nn.Module, mode: str, args: argparse.Namespace, example: torch.Tensor
) -> tuple[nn.Module, dict[str, Any]]:
    model = copy.deepcopy(base).eval()
    kwargs: dict[str, Any] = {"example_inputs": example}
    if name == "CPMCPruner":
        preset = get_preset(args.model.rstrip("0123456789"))
        kwargs.update(alpha=preset.alpha, beta=preset.beta)
    started = time.perf_counter()
    pruner = build_pruner(name, model, config_list(mode, args.sparsity), **kwargs)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    prune_s = time.perf_counter() - started
    stats = mask_stats(masks, mode, args.sparsity)
    before = conv_widths(model)
    started = time.perf_counter()
    speedup(model, masks, example)
    speedup_s = time.perf_counter() - started
    after = conv_widths(model)
    removed = sum(before[n] - after[n] for n in before)
    stats.update(
        removed_channels=removed,
        removed_of_masked=round(removed / stats["masked_channels"], 4)
        if stats["masked_channels"]
        else None,
        conv_widths_after=after,
        prune_s=round(prune_s, 2),
        speedup_s=round(speedup_s, 2),
        kwargs={k: v for k, v in kwargs.items() if k != "example_inputs"},
    )
    return model.eval(), stats


def run_pruner(
    name: str,
    mode: str,
    base: nn.Module,
    base_cost: tuple[float, float],
    data: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    started = time.perf_counter()
    model, stats = prune_one(name, base, mode, args, data["example"])
    macs, params = tp.utils.count_ops_and_params(model, data["example"])
    result: dict[str, Any] = {
        "pruner": name,
        "mode": mode,
        "params": int(params),
        "macs": int(macs),
        "params_reduction": 1 - params / base_cost[1],
        "macs_reduction": 1 - macs / base_cost[0],
        "masks": stats,
    }
    result["acc_no_ft"] = accuracy(model, data["test"])
    recalibrate_bn(model, data["calib"], batches=len(data["calib"]))
    result["acc_bn_recal"] = accuracy(model, data["test"])
    log(
        f"  {mode}/{name}: MACs -{100 * result['macs_reduction']:.1f}%, "
        f"no-FT {result['acc_no_ft']:.2f}, BN-recal {result['acc_bn_recal']:.2f}"
    )
    result["acc_after_ft"] = {}
    for seed in args.seeds:
        tuned = copy.deepcopy(model)
        train(
            tuned,
            shuffled(data["train_set"], seed),
            args.finetune_epochs,
            seed=seed,
            finetune=True,
        )
        result["acc_after_ft"][str(seed)] = accuracy(tuned, data["test"])
        log(f"  {mode}/{name}: fine-tune seed {seed}: {result['acc_after_ft'][str(seed)]:.2f}")
    values = list(result["acc_after_ft"].values())
    result["acc_after_ft_mean"] = statistics.fmean(values) if values else None
    result["acc_after_ft_std"] = statistics.stdev(values) if len(values) > 1 else None
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


# ---------------------------------------------------------------------------- report
def pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(mode: str, rows: list[dict[str, Any]], base_acc: float, seeds: list[int]) -> str:
    ft = f"acc after FT (mean of {len(seeds)})" if len(seeds) > 1 else "acc after FT"
    lines = [
        f"### config mode: {mode}",
        "",
        f"| pruner | params red. | MACs red. | acc no-FT | acc BN-recal | {ft} |",
        "|---|---:|---:|---:|---:|---:|",
        f"| (baseline) | 0.0 % | 0.0 % | {base_acc:.2f} | - | - |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['pruner']} | failed: {r['error']} | | | | |")
            continue
        spread = f" ± {r['acc_after_ft_std']:.2f}" if r["acc_after_ft_std"] is not None else ""
        lines.append(
            f"| {r['pruner']} | {100 * r['params_reduction']:.1f} % "
            f"| {100 * r['macs_reduction']:.1f} % | {pct(r['acc_no_ft'])} "
            f"| {pct(r['acc_bn_recal'])} | {pct(r['acc_after_ft_mean'])}{spread} |"
        )
    lines += [
        "",
        "| pruner | channels masked | weights masked | max layer ratio "
        "| layers > max_sparse_ratio | layers fully masked | masked channels removed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            continue
        m = r["masks"]
        lines.append(
            f"| {r['pruner']} | {100 * m['masked_channel_share']:.1f} % "
            f"| {100 * m['masked_weight_share']:.1f} % | {m['max_layer_ratio']:.2f} "
            f"| {len(m['layers_over_max_sparse_ratio'])} "
            f"| {len(m['layers_fully_masked'])} | {100 * (m['removed_of_masked'] or 0):.1f} % |"
        )
    lines += ["", *(f"- {note}" for note in config_notes(mode, rows))]
    return "\n".join(lines)


def config_notes(mode: str, rows: list[dict[str, Any]]) -> list[str]:
    """Whether each pruner did what the config asked, from its masks."""
    notes = []
    for r in rows:
        if "error" in r:
            continue
        m = r["masks"]
        if mode == "global":
            over, full = m["layers_over_max_sparse_ratio"], m["layers_fully_masked"]
            verdict = "honoured" if not over else f"NOT honoured ({len(over)} layers above it"
            verdict += f", {len(full)} fully masked)" if over else ""
            notes.append(
                f"{r['pruner']}: max_sparse_ratio {MAX_SPARSE_RATIO} {verdict}; global budget "
                f"met as {100 * m['masked_channel_share']:.1f} % of channels, "
                f"{100 * m['masked_weight_share']:.1f} % of weights"
            )
        else:
            off = m["layers_off_sparse_ratio"]
            verdict = "honoured in every layer" if not off else f"off in {len(off)} layers"
            notes.append(
                f"{r['pruner']}: per-layer sparse_ratio {verdict}; speedup removed "
                f"{100 * (m['removed_of_masked'] or 0):.1f} % of the masked channels "
                "(the rest are tied by residual adds to channels other layers keep)"
            )
    return notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--sparsity", type=float, default=0.5, help="sparse_ratio S")
    parser.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=12000, help="0: the whole split")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tune seeds")
    parser.add_argument("--base-seed", type=int, default=0, help="baseline training seed")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--no-cache", action="store_true", help="retrain the baseline")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="trained baselines")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not 0 < args.sparsity < 1:
        parser.error("--sparsity must lie in (0, 1)")
    if args.train_subset == 0:
        args.train_subset = None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"nni\.|torch_pruning")
    started = time.perf_counter()
    data = load_data(args)
    base, training = baseline(args, data)
    base_macs, base_params = tp.utils.count_ops_and_params(base, data["example"])
    base_acc = accuracy(base, data["test"])
    log(f"baseline: {base_acc:.2f} % test accuracy, {base_macs / 1e6:.2f} M MACs")

    results: dict[str, list[dict[str, Any]]] = {}
    for mode in args.modes:
        results[mode] = []
        for name in args.pruners:
            try:
                row = run_pruner(name, mode, base, (base_macs, base_params), data, args)
            except Exception as error:  # record and go on: one pruner's failure is a result
                log(f"  {mode}/{name} failed: {type(error).__name__}: {error}")
                row = {"pruner": name, "mode": mode, "error": f"{type(error).__name__}: {error}"}
            results[mode].append(row)

    wall = time.perf_counter() - started
    report = "\n\n".join(table(m, results[m], base_acc, args.seeds) for m in args.modes)
    print(report)
    print(f"\nwall-clock: {wall:.0f} s")
    out = {
        "provenance": provenance(),
        "options": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "dataset_used": data["name"],
            "dataset_fallback_reason": data["fallback_reason"],
            "train_images": len(data["train_set"]),
            "test_images": len(data["test"].dataset),
            "config_lists": {m: config_list(m, args.sparsity) for m in args.modes},
            "baseline_training": f"SGD momentum 0.9, wd {TRAIN_WD}, OneCycleLR max_lr "
            f"{TRAIN_LR}, batch {BATCH}, augmentation of cpmc_plugin.data",
            "finetune": f"from the BN-recalibrated model: SGD momentum 0.9, wd {FT_WD}, "
            f"CosineAnnealingLR from {FT_LR} to 0 per step, batch {BATCH}",
            "bn_recalibration": f"reset running stats, momentum=None, one pass in train mode "
            f"under no_grad over the first {CALIB_IMAGES} un-augmented training images",
            "cost_counter": "torch_pruning.utils.count_ops_and_params on one example image",
        },
        "baseline": {
            **training,
            "acc": base_acc,
            "params": int(base_params),
            "macs": int(base_macs),
        },
        "results": results,
        "config_notes": {m: config_notes(m, results[m]) for m in args.modes},
        "nni_global_mode": "NNI 3.0 (nni/compression/pruning/tools/sparse_gen.py) ranks the raw "
        "per-channel metrics of all layers of a global group against one threshold and counts "
        "the budget in weight elements; max_sparse_ratio only enters through the group's total "
        "upper bound, so a single layer can be masked entirely. CPMCPruner counts the budget "
        "in channels of coupled groups (a residual-tied group once) and caps every layer.",
        "markdown": report,
        "wall_s": round(wall, 1),
    }
    write_json(args.out, out)
    log(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
