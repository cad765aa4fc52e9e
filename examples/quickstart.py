"""Prune torchvision's ResNet-18 to half its FLOPs with CPMC, report, save and reload.

Runs offline on a CPU in a few seconds (random weights: this shows the mechanics,
not accuracy). Run: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torchvision

from cpmc_plugin import CPMCPruner, load_pruned, save_pruned


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[model.fc])
    pruner.step()
    report = pruner.report()
    print(report)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18-cpmc50.pt"
        save_pruned(model, path, pruner.pruning_history())
        reloaded = load_pruned(torchvision.models.resnet18(num_classes=10), path, x).eval()
        with torch.no_grad():
            same = torch.equal(reloaded(x), model(x))
    print(f"MACs -{100 * report.macs_reduction:.2f} %, reloaded model identical: {same}")


if __name__ == "__main__":
    main()
