"""Sparse-train with OICSR, prune with CPMC to a FLOPs budget, fine-tune, report.

Runs offline on scikit-learn's 8x8 digits with a CIFAR-style ResNet-20 (1 input
channel) in about a minute on 2 CPU cores::

    python examples/oicsr_then_cpmc.py                       # CPMC ranks the channels
    python examples/oicsr_then_cpmc.py --criterion oicsr     # OICSR's group energy instead
    python examples/oicsr_then_cpmc.py --steps 4             # global greedy, 4 rounds

Steps: (1) train a baseline; (2) sparse-train with ``OICSRRegularizer.regularize()``
(group lasso over out-in channel groups, added to the gradients); (3) prune to the
FLOPs budget with ``CPMCPruner`` (``--steps`` > 1 fine-tunes between steps through
``finetune_fn``); (4) fine-tune; (5) print accuracies and reductions.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from cpmc_plugin import CPMCImportance, CPMCPruner, OICSRImportance, OICSRRegularizer
from cpmc_plugin.models import create_model

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def digits(seed: int = 0) -> Split:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(
    model: nn.Module,
    data: Split,
    epochs: int,
    lr: float,
    reg: OICSRRegularizer | None = None,
) -> None:
    x, y = data[0], data[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            if reg is not None:
                reg.regularize(model)  # after backward(), before step()
            optimizer.step()
            schedule.step()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Split) -> None:
    """Measure BatchNorm statistics again: they lag behind weights that shrank or went."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    model.train()
    for i in range(0, len(data[0]), 256):
        model(data[0][i : i + 256])


@torch.no_grad()
def accuracy(model: nn.Module, data: Split) -> float:
    model.eval()
    return float((model(data[2]).argmax(1) == data[3]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", choices=["cpmc", "oicsr"], default="cpmc")
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--lam", type=float, default=2e-3, help="group-lasso strength")
    parser.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    parser.add_argument("--sparse-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1, help="prune/fine-tune rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = digits(args.seed)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    example = data[0][:1]

    train(model, data, args.epochs, lr=0.1)
    baseline = accuracy(model, data)

    reg = OICSRRegularizer(model, example, lam=args.lam, ignored_layers=[model.classifier])
    norms_before = reg.group_norms()
    train(model, data, args.sparse_epochs, lr=0.05, reg=reg)
    recalibrate_bn(model, data)
    sparse = accuracy(model, data)
    norms_after = reg.group_norms()
    small = float((norms_after < 0.1 * norms_before.median()).float().mean())

    importance = (
        OICSRImportance() if args.criterion == "oicsr" else CPMCImportance.preset("resnet", example)
    )
    rounds = max(args.finetune_epochs // args.steps, 1)
    pruner = CPMCPruner(
        model,
        example,
        importance=importance,
        flops_reduction=args.flops_reduction,
        iterative_steps=args.steps,
        ignored_layers=[model.classifier],
        # global greedy: fine-tune briefly after every step but the last
        finetune_fn=lambda m, step: train(m, data, rounds, 0.01) if step < args.steps else None,
    )
    report = pruner.prune(progress=True)
    recalibrate_bn(model, data)
    pruned = accuracy(model, data)
    train(model, data, args.finetune_epochs, lr=0.01)
    finetuned = accuracy(model, data)

    print(f"\nOICSR (lam={args.lam}) then {args.criterion} to -{args.flops_reduction:.0%} FLOPs")
    print(f"  groups below 10 % of the median norm after sparse training: {small:.1%}")
    print(
        f"  accuracy: baseline {baseline:.2%}, sparse {sparse:.2%}, pruned {pruned:.2%} "
        f"(these two after BN recalibration), "
        f"fine-tuned {finetuned:.2%}"
    )
    print(
        f"  params {report.params_before:,} -> {report.params_after:,} "
        f"(-{report.params_reduction:.1%}), MACs {report.macs_before:,} -> "
        f"{report.macs_after:,} (-{report.macs_reduction:.1%}, {report.speedup:.2f}x)"
    )


if __name__ == "__main__":
    main()
