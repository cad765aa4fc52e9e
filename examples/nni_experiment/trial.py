"""One NNI trial: train a small model, prune it with the pruner NNI chose, fine-tune, report.

NNI hands the trial its parameters (``nni.get_next_parameter()``): ``pruner`` (a name
:func:`cpmc_plugin.nni.build_pruner` knows: ``CPMCPruner``, ``L1NormPruner``,
``FPGMPruner``, ...), ``sparsity`` (the share of conv output channels to mask, one
global ranking) and, for CPMC, ``alpha``/``beta``. Run standalone, it uses the
defaults below. The trial reports the test accuracy after fine-tuning as NNI's
``default`` metric, with the parameter and MACs reductions beside it.

Data: ``--dataset digits`` (embedded, default) or ``fashion-mnist`` (Debian's
``dataset-fashion-mnist``). The baseline is trained with a fixed seed, so every
trial prunes the same model.
"""

from __future__ import annotations

import argparse
import copy
import time

import nni
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin.data import make_loaders
from cpmc_plugin.models import create_model
from cpmc_plugin.nni import build_pruner, speedup

DEFAULTS = {"pruner": "CPMCPruner", "sparsity": 0.5, "alpha": 0.0, "beta": 0.0}


def train(model: nn.Module, loader, epochs: int, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(epochs * len(loader), 1)
    )
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            schedule.step()


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, default=6, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = {**DEFAULTS, **(nni.get_next_parameter() or {})}
    started = time.time()

    train_loader, test_loader, info = make_loaders(
        args.dataset, batch_size=64, train_subset=args.train_subset, seed=0
    )
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=info.num_classes, in_channels=info.in_channels)
    train(model, train_loader, args.epochs, lr=0.1)
    baseline = accuracy(model, test_loader)

    x = torch.zeros(1, info.in_channels, info.image_size, info.image_size)
    macs, n_params = tp.utils.count_ops_and_params(model, x)
    config = [
        {
            "op_types": ["Conv2d"],
            "sparse_ratio": float(params["sparsity"]),
            "global_group_id": "convs",
            "max_sparse_ratio": 0.9,
        }
    ]
    options = {"example_inputs": x}
    if params["pruner"].lower() == "cpmcpruner":
        options.update(alpha=float(params["alpha"]), beta=float(params["beta"]))
    pruned = copy.deepcopy(model)
    pruner = build_pruner(params["pruner"], pruned, config, **options)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup(pruned, masks, x)
    pruned_macs, pruned_params = tp.utils.count_ops_and_params(pruned, x)
    before_finetune = accuracy(pruned, test_loader)
    train(pruned, train_loader, args.finetune_epochs, lr=0.02)
    final = accuracy(pruned, test_loader)

    result = {
        "default": final,
        "baseline": baseline,
        "before_finetune": before_finetune,
        "macs_reduction": 1 - pruned_macs / macs,
        "params_reduction": 1 - pruned_params / n_params,
        "seconds": time.time() - started,
    }
    print(params, result)
    nni.report_final_result(result)


if __name__ == "__main__":
    main()
