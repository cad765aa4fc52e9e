"""A restored prune leaves the graph's concatenation state as it found it.

torch-pruning's operation nodes (``tp.ops``) keep the sizes of the tensors a
concatenation joins, and pruning a group rewrites them (partly in place). A snapshot
that put back only the model let the next prune map channels through stale sizes:
after a calibration on a DenseNet every later plan pruned a BatchNorm by the wrong
channels, and the step was refused.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp

from cpmc_plugin import CPMCPruner
from cpmc_plugin.torch_pruning.calibration.grid import DEFAULT_CANDIDATES
from cpmc_plugin.torch_pruning.graph.snapshot import prune_snapshot
from tests.archs import ARCHS, TinyDenseNet, build

__all__: list[str] = []

DENSENET = next(a for a in ARCHS if a.build is TinyDenseNet)


def operation_state(graph: tp.DependencyGraph) -> dict[int, dict[str, object]]:
    return {
        id(module): {k: copy.deepcopy(v) for k, v in vars(module).items() if k.endswith("sizes")}
        for module in graph.module2node
        if type(module).__module__ == tp.ops.__name__
    }


def first_dense_conv_group(graph: tp.DependencyGraph, model: TinyDenseNet) -> tp.Group:
    conv = model.features[1].conv
    return graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 3, 5])


def test_a_restored_prune_puts_the_concat_sizes_back() -> None:
    model = build(DENSENET)
    x = DENSENET.example()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    before = operation_state(graph)
    assert any(state.get("concat_sizes") for state in before.values())  # it has concats
    snapshot = prune_snapshot(graph)
    first_dense_conv_group(graph, model).prune()
    assert operation_state(graph) != before  # pruning did rewrite them
    snapshot.restore()
    assert operation_state(graph) == before


def test_calibration_on_a_densenet_evaluates_every_candidate_and_prunes() -> None:
    model = build(DENSENET)
    x = DENSENET.example()[:1]
    generator = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(8, 3, 32, 32, generator=generator),
            torch.randint(0, 10, (8,), generator=generator),
        )
        for _ in range(4)
    ]
    pruner = CPMCPruner(
        model,
        x,
        flops_reduction=0.3,
        ignored_layers=[model.classifier],
        calibration_data=data,
        calibration_batches=4,
    )
    report = pruner.calibration
    assert report is not None
    assert len(report.candidates) == len(DEFAULT_CANDIDATES)
    assert [c.error for c in report.candidates] == [None] * len(DEFAULT_CANDIDATES)
    pruner.step()
    macs, _ = tp.utils.count_ops_and_params(model, x)
    pruned = pruner.report()
    assert macs == pruned.macs_after
    # one stem channel of this small net is 1.8 % of its MACs: the budget's grain
    assert abs(pruned.macs_reduction - 0.3) <= 0.02
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
