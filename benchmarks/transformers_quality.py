"""CPMC against the host's criteria on two small transformers trained on real data.

- ``--task vit``: a timm ViT (28x28 inputs, patch 7, width 96, depth 4, 4 heads) on all of
  Fashion-MNIST (60k/10k), measured by test accuracy.
- ``--task lm``: a LLaMA-style causal LM with grouped-query attention (width 128, 4
  layers, 8 query / 2 key-value heads, bytes as tokens) on the Python standard library's
  own source files, split into train and test by file, measured by test perplexity.

Every prune goes through ``CPMCPruner(..., flops_reduction=rate, **head_options(model))``
(heads, MLP channels and the hidden width in one ranking, an exact budget that counts
the attention matmuls). Each criterion then gets the same short fine-tune, once per
seed. Every finished cell is written to ``--out`` at once; ``--resume`` skips those.

    python benchmarks/transformers_quality.py --task vit --resume \
        --out benchmarks/results/transformers_vit.json
    python benchmarks/transformers_quality.py --task lm --resume \
        --out benchmarks/results/transformers_lm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sysconfig
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import ROOT, cached_baseline, log, provenance, write_json

from cpmc_plugin import CPMCPruner, calibrate_importance, head_options
from cpmc_plugin.criteria import make_importance, needs_data, needs_gradients

CRITERIA = ("cpmc-auto", "cpmc", "l1", "l2", "taylor")
CACHE = ROOT / "benchmarks" / "results" / "cache"


# ------------------------------------------------------------------------------ tasks
class VitTask:
    """timm ViT on Fashion-MNIST; the metric is test accuracy in percent (higher is better)."""

    name, metric, higher_is_better = "vit", "accuracy", True

    def __init__(self, args: argparse.Namespace) -> None:
        from cpmc_plugin.data import load_dataset

        def stack(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
            data = load_dataset("fashion-mnist", train=train)
            images = torch.stack([data[i][0] for i in range(len(data))])
            labels = torch.tensor([data[i][1] for i in range(len(data))])
            return images, labels

        self.train_x, self.train_y = stack(True)
        self.test_x, self.test_y = stack(False)
        self.example = self.train_x[:1]
        self.args = args

    def build(self) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        return VisionTransformer(
            img_size=28,
            patch_size=7,
            in_chans=1,
            num_classes=10,
            embed_dim=96,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
        )

    def batches(self, seed: int, samples: int, batch: int = 128) -> Iterator[tuple[Any, Any]]:
        order = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(seed))
        order = order[:samples]
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            yield self.train_x[idx], self.train_y[idx]

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        return F.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        correct = 0
        for i in range(0, len(self.test_x), 500):
            correct += int(
                (model(self.test_x[i : i + 500]).argmax(1) == self.test_y[i : i + 500]).sum()
            )
        return 100.0 * correct / len(self.test_x)

    def loss_fn(self, outputs: Any, targets: Any) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    train_steps = property(lambda self: self.args.epochs * (len(self.train_x) // 128))
    train_samples = property(lambda self: len(self.train_x))


def stdlib_split(test_every: int = 10) -> tuple[bytes, bytes]:
    """The standard library's ``.py`` files, concatenated: every file whose CRC-32 of its
    relative path is 0 modulo ``test_every`` is test text, the rest training text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, test = [], []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "site-packages" in relative:
            continue
        data = path.read_bytes()
        (test if zlib.crc32(relative.encode()) % test_every == 0 else train).append(data)
    return b"\n".join(train), b"\n".join(test)


class LmTask:
    """A byte-level LLaMA-style LM on the standard library; the metric is test perplexity."""

    name, metric, higher_is_better = "lm", "perplexity", False
    context = 128

    def __init__(self, args: argparse.Namespace) -> None:
        train, test = stdlib_split()
        self.train = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
        self.test = torch.frombuffer(bytearray(test), dtype=torch.uint8).long()
        self.example = self.train[None, : self.context]
        self.args = args
        log(f"stdlib text: {len(train) / 1e6:.1f} MB train, {len(test) / 1e6:.1f} MB test")

    def build(self) -> nn.Module:
        import transformers

        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=self.context,
            attn_implementation="eager",
            use_cache=False,
        )
        return transformers.LlamaForCausalLM(config)

    def batches(self, seed: int, samples: int, batch: int = 32) -> Iterator[tuple[Any, Any]]:
        g = torch.Generator().manual_seed(seed)
        for _ in range(samples // batch):
            starts = torch.randint(0, len(self.train) - self.context - 1, (batch,), generator=g)
            window = torch.stack([self.train[s : s + self.context + 1] for s in starts.tolist()])
            yield window[:, :-1], window[:, 1:]

    def loss_fn(self, outputs: Any, targets: Any) -> torch.Tensor:
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        return self.loss_fn(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, windows: int = 400) -> float:
        model.eval()
        step = max((len(self.test) - self.context - 1) // windows, 1)
        total = 0.0
        for k in range(windows):
            window = self.test[k * step : k * step + self.context + 1][None]
            total += float(self.loss(model, window[:, :-1], window[:, 1:]))
        return math.exp(total / windows)

    train_steps = property(lambda self: self.args.lm_steps)
    train_samples = property(lambda self: self.args.lm_steps * 32)


# ------------------------------------------------------------------------------ training
def train(task: Any, model: nn.Module, *, steps: int, samples: int, lr: float, seed: int) -> None:
    """AdamW with a cosine schedule over ``steps`` batches of ``task.batches(seed, ...)``."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=max(steps, 1))
    done, epoch = 0, 0
    while done < steps:
        for inputs, targets in task.batches(seed * 1000 + epoch, samples):
            loss = task.loss(model, inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            done += 1
            if done >= steps:
                break
        epoch += 1
    model.eval()


def prune(task: Any, model: nn.Module, criterion: str, rate: float) -> tuple[float, float, Any]:
    """Prune ``model`` in place with ``criterion`` to ``rate`` fewer FLOPs; (MACs removed,
    seconds, what calibration chose)."""
    options = head_options(model)
    x = task.example
    started = time.perf_counter()
    chosen = None
    if criterion == "cpmc-auto":
        data = list(task.batches(12345, 16 * 64, batch=64))
        importance = calibrate_importance(
            model, x, data, flops_reduction=rate, batches=16, loss_fn=task.loss_fn, **options
        )
        chosen = importance.calibration.best.options
    elif needs_data(criterion):  # data-aware CPMC: measured on 8 training batches
        data = list(task.batches(12345, 8 * 64, batch=64))
        importance = make_importance(
            criterion, example_inputs=x, family=None, data=data, loss_fn=task.loss_fn
        )
    else:
        importance = make_importance(criterion, example_inputs=x, family=None)
        if needs_gradients(criterion):
            model.zero_grad(set_to_none=True)
            inputs, targets = next(task.batches(54321, 256, batch=64))
            model.eval()
            task.loss(model, inputs, targets).backward()
    pruner = CPMCPruner(model, x, importance, flops_reduction=rate, **options)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return pruner.report().macs_reduction, time.perf_counter() - started, chosen


# ------------------------------------------------------------------------------ report
def report(result: dict[str, Any]) -> str:
    """Markdown: per rate and criterion, MACs removed, the metric without and after the
    fine-tune (mean ± sample std over the seeds) and the criterion's rank at that rate."""
    metric = "accuracy" if "accuracy" in result["baseline"] else "perplexity"
    higher = metric == "accuracy"
    lines = [
        f"Baseline {metric}: {result['baseline'][metric]:.2f}. Rank 1 = best of the rate "
        f"({'higher' if higher else 'lower'} is better), by the fine-tuned mean.",
        "",
        f"| rate | criterion | MACs removed | {metric}, no fine-tune | {metric}, fine-tuned "
        "(mean ± std) | seeds | rank |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    cells = result["cells"]
    for rate in sorted({c["rate"] for c in cells}):
        rows = []
        for criterion in dict.fromkeys(c["criterion"] for c in cells if c["rate"] == rate):
            mine = [c for c in cells if c["rate"] == rate and c["criterion"] == criterion]
            once = next((c for c in mine if c["seed"] is None), None)
            tuned = [c[metric] for c in mine if c["seed"] is not None]
            mean = sum(tuned) / len(tuned) if tuned else float("nan")
            std = (
                (sum((v - mean) ** 2 for v in tuned) / (len(tuned) - 1)) ** 0.5
                if len(tuned) > 1
                else float("nan")
            )
            rows.append((criterion, once, mean, std, len(tuned)))
        order = sorted((r for r in rows if r[4]), key=lambda r: -r[2] if higher else r[2])
        for criterion, once, mean, std, n in rows:
            rank = order.index(next(r for r in order if r[0] == criterion)) + 1 if n else "n/a"
            removed = f"{100 * once['macs_reduction']:.2f} %" if once else "n/a"
            plain = f"{once[metric]:.2f}" if once else "n/a"
            tuned = f"{mean:.2f} ± {std:.2f}" if n > 1 else (f"{mean:.2f}" if n else "n/a")
            row = [f"{100 * rate:.0f}%", criterion, removed, plain, tuned, str(n), str(rank)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["vit", "lm"], required=True)
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    parser.add_argument("--rates", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6, help="ViT baseline epochs")
    parser.add_argument("--lm-steps", type=int, default=1500, help="LM baseline steps")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help="trained baselines")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="print --out's tables")
    args = parser.parse_args()
    if args.report_only:
        print(report(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    task = VitTask(args) if args.task == "vit" else LmTask(args)
    result: dict[str, Any] = {"cells": []}
    if args.resume and args.out.exists():
        result = json.loads(args.out.read_text())
    result["provenance"] = provenance()
    result["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    done = {(c["criterion"], c["rate"], c.get("seed")) for c in result["cells"]}

    model = task.build()
    lr = 2e-3
    steps_key = f"e{args.epochs}" if task.name == "vit" else f"s{args.lm_steps}"
    started = time.perf_counter()
    cached, extra = cached_baseline(
        model,
        args.cache_dir / f"transformers-{task.name}-{steps_key}.pt",
        lambda: (
            train(task, model, steps=task.train_steps, samples=task.train_samples, lr=lr, seed=0)
            or {"train_s": round(time.perf_counter() - started, 1)}
        ),
    )
    result["baseline"] = {task.metric: task.evaluate(model), "cached": cached, **extra}
    log(f"[{task.name}] baseline {task.metric} {result['baseline'][task.metric]:.3f}")
    write_json(args.out, result)
    for rate in args.rates:
        for criterion in args.criteria:
            pruned = copy.deepcopy(model)
            if (criterion, rate, None) not in done:
                reduction, seconds, chosen = prune(task, pruned, criterion, rate)
                cell = {
                    "criterion": criterion,
                    "rate": rate,
                    "seed": None,
                    "macs_reduction": reduction,
                    "prune_s": round(seconds, 2),
                    "calibration_chose": chosen,
                    task.metric: task.evaluate(pruned),
                }
                result["cells"].append(cell)
                write_json(args.out, result)
                value = cell[task.metric]
                log(f"[{task.name}] {criterion} @ {rate:.0%}: {task.metric} {value:.3f} (no FT)")
            else:
                prune(task, pruned, criterion, rate)
            for seed in args.seeds:
                if (criterion, rate, seed) in done:
                    continue
                tuned = copy.deepcopy(pruned)
                train(
                    task,
                    tuned,
                    steps=args.finetune_steps,
                    samples=args.finetune_steps * 64,
                    lr=lr / 4,
                    seed=seed + 1,
                )
                cell = {
                    "criterion": criterion,
                    "rate": rate,
                    "seed": seed,
                    task.metric: task.evaluate(tuned),
                }
                result["cells"].append(cell)
                write_json(args.out, result)
                value = cell[task.metric]
                log(
                    f"[{task.name}] {criterion} @ {rate:.0%} seed {seed}: {task.metric} {value:.3f}"
                )


if __name__ == "__main__":
    main()
