"""OICSR under DistributedDataParallel: 2 CPU processes (gloo) agree with one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import OICSRRegularizer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

LAM, LR, STEPS, WORLD = 0.05, 0.1, 3, 2
MODES = ("penalty", "regularize+prox")


class Net(nn.Module):
    """No BatchNorm: DDP's per-rank batch statistics would differ from one process."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def train(model: nn.Module, net: Net, x: torch.Tensor, y: torch.Tensor, mode: str) -> Net:
    """``STEPS`` SGD steps on ``model`` (``net`` itself, or its DDP wrapper)."""
    reg = OICSRRegularizer(model, x[:1], lam=LAM, ignored_layers=[net.fc])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if mode == "penalty":
            (loss + LAM * reg.penalty()).backward()
            optimizer.step()
        else:
            loss.backward()
            reg.regularize(model)
            optimizer.step()
            reg.proximal_step(LR)
    return net


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = data()
        shard = slice(rank * 4, (rank + 1) * 4)
        for mode in MODES:
            torch.manual_seed(0)
            net = Net()
            wrapped = nn.parallel.DistributedDataParallel(net)
            train(wrapped, net, x[shard], y[shard], mode)
            torch.save(flat(net), Path(out_dir) / f"{mode}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x, y = data()
    for mode in MODES:
        reference = flat(_single(x, y, mode))
        ranks = [torch.load(tmp_path / f"{mode}-{r}.pt") for r in range(WORLD)]
        torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=0)  # ranks agree exactly
        # DDP averages the shards' gradients: the same as one process on the whole batch
        torch.testing.assert_close(ranks[0], reference, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(reference, flat(_fresh())), "training changed nothing"


def _fresh() -> Net:
    torch.manual_seed(0)
    return Net()


def _single(x: torch.Tensor, y: torch.Tensor, mode: str) -> Net:
    net = _fresh()
    return train(net, net, x, y, mode)
