"""The shim around torch-pruning's concat mapping (RoPE's ``rotate_half`` hang).

These tests are canaries: they fail when torch or torch-pruning change the behaviour
the shim works around, which is the signal to re-evaluate it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping

from cpmc_plugin import CPMCPruner, fixed_graphs
from cpmc_plugin.torch_pruning.graph.negative_concat import unmap_non_channel_concats


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GQAToy(nn.Module):
    """Hidden 16, 4 query heads and 2 key/value heads of 4, RoPE, ``repeat_kv``, SDPA."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 16)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
        self.o = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # widths read from the layers, as Hugging Face's attention does
        x = self.embed(x)
        q = self.q(x).view(b, t, -1, 4).transpose(1, 2)
        k = self.k(x).view(b, t, -1, 4).transpose(1, 2)
        v = self.v(x).view(b, t, -1, 4).transpose(1, 2)
        angle = torch.arange(t, dtype=x.dtype)[:, None]
        cos, sin = angle.cos(), angle.sin()
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        heads, kv = q.shape[1], k.shape[1]
        k = k[:, :, None].expand(b, kv, heads // kv, t, 4).reshape(b, heads, t, 4)
        v = v[:, :, None].expand(b, kv, heads // kv, t, 4).reshape(b, heads, t, 4)
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.o(attended.transpose(1, 2).reshape(b, t, -1))
        return self.head(x)


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging: the bug this shim works around is an endless loop."""

    def expire(*_: object) -> None:
        raise TimeoutError("torch-pruning's grouping did not finish in 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _cat_deps(graph: tp.DependencyGraph) -> list[object]:
    cats = [n for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.CONCAT]
    return [dep for node in cats for dep in node.dependencies]


def test_torch_still_reports_a_negative_cat_dim_wrapped() -> None:
    a = torch.randn(2, 3, requires_grad=True)
    grad_fn = torch.cat([a, a], -1).grad_fn
    assert grad_fn._saved_dim == 2**64 - 1
    assert tuple(grad_fn._input_metadata[0].shape) == (2, 6)


def test_canary_the_host_still_maps_rotate_half_as_a_channel_concat() -> None:
    # if this fails, torch-pruning fixed its dim check: re-evaluate the shim
    graph = tp.DependencyGraph().build_dependency(GQAToy(), torch.randn(1, 3, 16))
    mapped = [d for d in _cat_deps(graph) if d.index_mapping[1] is not None]
    assert mapped, "the host no longer maps the negative-dim concat"


def test_the_flag_survives_the_hosts_remapping() -> None:
    graph = tp.DependencyGraph().build_dependency(GQAToy(), torch.randn(1, 3, 16))
    assert unmap_non_channel_concats(graph) == 2  # q's and k's rotate_half
    index_mapping.update_index_mapping(graph)  # every get_pruning_group does this
    assert all(d.index_mapping[1] is None for d in _cat_deps(graph))


def test_grouping_terminates_with_the_expected_groups(alarm: None) -> None:
    toy = GQAToy()
    with fixed_graphs():
        graph = tp.DependencyGraph().build_dependency(toy, torch.randn(1, 3, 16))
    groups = list(graph.get_all_groups(ignored_layers=[toy.head]))
    by_root = {g[0].dep.target.module: g for g in groups}
    query = by_root[toy.q]
    members = {(item.dep.target.module, len(item.idxs)) for item in query}
    assert {(toy.q, 16), (toy.o, 16), (toy.k, 16), (toy.v, 16)} <= members
    for alone in (toy.k, toy.v):  # reached from no consumer: the host cannot prune them alone
        layers = {i.dep.target.module for i in by_root[alone]}
        assert {m for m in layers if isinstance(m, nn.Linear)} == {alone}
    assert tp.DependencyGraph.build_dependency.__name__ == "build_dependency"


def test_cpmc_pruner_prunes_the_toy_with_heads(alarm: None) -> None:
    toy, x = GQAToy().eval(), torch.randn(1, 3, 16)
    heads = {toy.q: 4, toy.k: 2, toy.v: 2}
    pruner = CPMCPruner(toy, x, flops_reduction=0.2, ignored_layers=[toy.head], num_heads=heads)
    pruner.step()
    assert abs(pruner.report().macs_reduction - 0.2) <= 0.05
    assert toy.k.out_features == 8 and toy.v.out_features == 8  # key/value heads stay
    assert toy.q.out_features % 8 == 0  # the same query heads left per key/value head
    assert torch.isfinite(toy(x)).all()


def test_concats_along_channels_keep_their_mapping() -> None:
    class ChannelsLast(nn.Module):  # Swin's patch merging: cat(..., -1) *is* channels
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.cat([self.a(x), self.b(x)], -1))

    net = ChannelsLast()
    graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 2, 2, 4))
    assert unmap_non_channel_concats(graph) == 0
    group = graph.get_pruning_group(net.a, tp.prune_linear_out_channels, [0])
    touched = {(item.dep.target.module, tuple(item.idxs)) for item in group}
    assert (net.out, (0,)) in touched


@pytest.mark.slow
def test_swin_is_untouched() -> None:
    models = pytest.importorskip("torchvision.models")
    swin = models.swin_t().eval()
    graph = tp.DependencyGraph().build_dependency(swin, torch.randn(1, 3, 224, 224))
    assert unmap_non_channel_concats(graph) == 0
