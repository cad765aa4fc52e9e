"""save_pruned / load_pruned: a pruned model round-trips; other models and files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cpmc_plugin import CPMCPruner, load_pruned, save_pruned
from tests.archs import ARCHS, Arch, build, classifier_of
from tests.helpers import assert_unchanged, model_state


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_save_and_reload_round_trip(arch: Arch, tmp_path: Path) -> None:
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(
        model, x, flops_reduction=0.5, iterative_steps=2, ignored_layers=[classifier_of(model)]
    )
    pruner.step()
    pruner.step()
    path = tmp_path / "pruned.pt"
    save_pruned(model, path, pruner.pruning_history())
    fresh = build(arch, seed=1)
    reloaded = load_pruned(fresh, path, x)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), model(x))
    assert fresh.state_dict().keys() == build(arch).state_dict().keys()
    pristine = build(arch, seed=1).state_dict()
    assert all(torch.equal(v, pristine[k]) for k, v in fresh.state_dict().items())
    data = torch.load(path, weights_only=True)  # plain data: loads without pickled code
    assert data["format"].startswith("cpmc-plugin/")


def test_reload_into_another_architecture_is_refused(tmp_path: Path) -> None:
    model = build(ARCHS[1])
    x = ARCHS[1].example()
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier_of(model)])
    pruner.step()
    path = tmp_path / "pruned.pt"
    save_pruned(model, path, pruner.pruning_history())
    other = build(ARCHS[0])
    before = model_state(other)
    with pytest.raises(ValueError, match="does not fit this architecture"):
        load_pruned(other, path, x)
    assert_unchanged(other, before)


def test_reload_of_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a cpmc-plugin pruned model"):
        load_pruned(build(ARCHS[0]), path, ARCHS[0].example())
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable pruned-model file"):
        load_pruned(build(ARCHS[0]), path, ARCHS[0].example())
