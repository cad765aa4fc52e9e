"""CPMCPruner probes a train-mode model in eval mode, and leaves its mode and statistics alone."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import CPMCPruner
from tests.helpers import budget_tolerance


class BN1dHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x)).mean((2, 3))
        return self.out(F.relu(self.bn(self.fc(x))))


def test_train_mode_model_batch_one_is_probed_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = BN1dHead().train()
    x = torch.randn(1, 3, 8, 8)
    stats = (net.bn.running_mean.clone(), net.bn.num_batches_tracked.clone())
    pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.out])
    pruner.step()
    assert net.training and all(m.training for m in net.modules())
    assert net.bn.num_batches_tracked == stats[1]
    assert torch.equal(net.bn.running_mean, stats[0][: len(net.bn.running_mean)]) or (
        len(net.bn.running_mean) < 16
    )
    assert abs(pruner.report().macs_reduction - 0.3) <= budget_tolerance(pruner)
