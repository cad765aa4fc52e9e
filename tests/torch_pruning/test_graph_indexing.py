"""root_lookup / positions_in give what each of today's hand-written root maps gives.

The references below are the two shapes the map is written in today: a dict
``{root index: position}`` (nni/speedup._masked_out, nni/pruner._producer_items and
_plan_flops, bn_fista._zero_scale, _fold.plan_folds, _removal.blocks_line_up) and a
``-1``-filled tensor (_groups.group_stats and misaligned_grouped_conv,
_cost_model._ownership, _weight_groups.from_groups).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin.models import create_model
from cpmc_plugin.models.densenet import DenseNet
from cpmc_plugin.torch_pruning.graph.indexing import positions_in, root_lookup

ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


def dict_positions(group, root_idxs) -> list[int]:
    """Today's dict map (``int(r) in position`` filters the rest: -1 here)."""
    position = {int(r): k for k, r in enumerate(group[0].root_idxs)}
    return [position.get(int(r), -1) for r in root_idxs]


def tensor_lookup(group) -> torch.Tensor:
    """Today's tensor map (_cost_model._ownership)."""
    root = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
    lookup = torch.full((int(root.max()) + 1,), -1, dtype=torch.long)
    lookup[root] = torch.arange(len(root))
    return lookup


def tensor_positions(lookup: torch.Tensor, root_idxs) -> torch.Tensor:
    """Today's read of it (_groups.misaligned_grouped_conv)."""
    roots = torch.as_tensor(root_idxs, dtype=torch.long)
    inside = (roots >= 0) & (roots < len(lookup))
    where = torch.full_like(roots, -1)
    where[inside] = lookup[roots[inside]]
    return where


def groups_of(model: nn.Module, size: int) -> list:
    """Every conv/linear group, and for each a group of half its channels, in reverse order."""
    torch.manual_seed(0)
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, 3, size, size)
    )
    full = list(graph.get_all_groups(root_module_types=ROOTS))
    chosen = []
    for group in full:
        root = group[0]
        picked = sorted(root.root_idxs)[1::2][::-1]  # odd positions, descending: position != index
        if picked:
            chosen.append(graph.get_pruning_group(root.dep.target.module, root.dep.handler, picked))
    return full + chosen


def check_against_today(groups) -> tuple[int, int]:
    """Compare on every item of every group; return (items, items whose positions != indices)."""
    items = moved = 0
    for group in groups:
        lookup = root_lookup(group)
        assert torch.equal(lookup, tensor_lookup(group))
        for item in group:
            got = positions_in(lookup, item.root_idxs)
            assert got.tolist() == dict_positions(group, item.root_idxs)
            assert torch.equal(got, tensor_positions(tensor_lookup(group), item.root_idxs))
            # _groups.group_stats skips an item when any root index is outside: same test
            roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
            old_skip = bool(
                (roots > len(lookup) - 1).any() or (tensor_lookup(group)[roots] < 0).any()
            )
            assert old_skip == bool((got < 0).any())
            items += 1
            moved += got.tolist() != [int(r) for r in item.root_idxs]
    return items, moved


def test_resnet20_groups():
    items, moved = check_against_today(groups_of(create_model("resnet20"), 32))
    assert items > 100 and moved > 10  # the partial groups exercise a non-identity map


def test_densenet_concat_groups():
    groups = groups_of(DenseNet(depth=10, growth=4), 16)
    concat = [it for g in groups for it in g if list(it.idxs) != list(it.root_idxs)]
    assert concat, "expected items whose channels sit at an offset of a concatenation"
    items, moved = check_against_today(groups)
    assert items > 100 and moved > 10


def test_removal_positions_match_the_nni_planner():
    """nni/pruner._plan_flops: sorted(position[r] for r in idxs) for idxs the plan removes."""
    model = create_model("resnet20")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    for group in graph.get_all_groups(root_module_types=ROOTS):
        idxs = list(group[0].root_idxs)[::3][::-1]
        position = {int(r): k for k, r in enumerate(group[0].root_idxs)}
        expected = sorted(position[r] for r in idxs)
        assert torch.sort(positions_in(root_lookup(group), idxs)).values.tolist() == expected


def fake(root_idxs) -> list:
    return [SimpleNamespace(root_idxs=root_idxs)]


def test_known_answers():
    group = fake([4, 1, 6])
    assert root_lookup(group).tolist() == [-1, 1, -1, -1, 0, -1, 2]
    assert positions_in(root_lookup(group), [6, 4, 5, 9, -2, 1]).tolist() == [2, 0, -1, -1, -1, 1]
    assert positions_in(root_lookup(group), torch.tensor([1, 1])).tolist() == [1, 1]
    assert positions_in(root_lookup(group), []).tolist() == []


def test_a_repeated_root_index_maps_to_its_last_position_like_the_dict():
    group = fake([5, 2, 5, 0])
    assert root_lookup(group).tolist() == [3, -1, 1, -1, -1, 2]
    assert positions_in(root_lookup(group), [5, 2, 0]).tolist() == dict_positions(group, [5, 2, 0])


def test_an_empty_root_owns_nothing():
    lookup = root_lookup(fake([]))
    assert lookup.tolist() == []
    assert positions_in(lookup, [0, 3]).tolist() == [-1, -1]


@pytest.mark.parametrize("idxs", [[0, 1], torch.tensor([0, 1])])
def test_positions_do_not_alias_the_input(idxs):
    before = list(map(int, idxs))
    where = positions_in(root_lookup(fake([1, 0])), idxs)
    where += 10
    assert list(map(int, idxs)) == before and where.tolist() == [11, 10]
