"""core.registry.Registry: register / names / canonical / get, one set of errors."""

from __future__ import annotations

import pytest

from cpmc_plugin.core.registry import Registry


def _pruners(**kwargs) -> Registry[int]:
    registry: Registry[int] = Registry("pruner", **kwargs)
    for i, name in enumerate(["L2NormPruner", "CPMCPruner", "FPGMPruner"]):
        registry.register(name, i)
    return registry


def test_register_returns_the_entry_and_names_keep_the_order():
    registry = _pruners()
    assert registry.register("AGPPruner", 7) == 7
    assert registry.names() == ["L2NormPruner", "CPMCPruner", "FPGMPruner", "AGPPruner"]
    assert list(registry) == registry.names() and len(registry) == 4


def test_sorted_names():
    assert _pruners(sort=True).names() == ["CPMCPruner", "FPGMPruner", "L2NormPruner"]


def test_lookups_fold_case_and_outer_spaces():
    registry = _pruners()
    assert registry.get("cpmcpruner") == 1 and registry.get("  FPGMPRUNER\t") == 2
    assert registry.canonical("l2normpruner") == "L2NormPruner"
    assert "cpmcpruner" in registry and "nope" not in registry and 3 not in registry


def test_without_folding_a_name_must_match_exactly():
    registry: Registry[str] = Registry("dataset", fold_case=False)
    registry.register("cifar10", "c")
    assert registry.get("cifar10") == "c" and registry.canonical("cifar10") == "cifar10"
    assert "CIFAR10" not in registry and " cifar10" not in registry
    with pytest.raises(ValueError, match=r"^unknown dataset 'CIFAR10'; known datasets: cifar10$"):
        registry.get("CIFAR10")
    registry.register("CIFAR10", "other")  # a different name here
    assert registry.names() == ["cifar10", "CIFAR10"]


def test_an_unknown_name_lists_the_known_ones_then_the_hint():
    registry = _pruners()
    text = "unknown pruner 'x'; known pruners: L2NormPruner, CPMCPruner, FPGMPruner"
    with pytest.raises(ValueError, match=f"^{text}$"):
        registry.get("x")
    with pytest.raises(ValueError, match=f"^{text} \\(or 'tv:<name>'\\)$"):
        registry.canonical("x", hint=" (or 'tv:<name>')")


def test_the_plural_is_used_in_the_message():
    registry: Registry[int] = Registry("criterion", "criteria")
    registry.register("cpmc", 0)
    with pytest.raises(ValueError, match="^unknown criterion 'l9'; known criteria: cpmc$"):
        registry.get("l9")


@pytest.mark.parametrize("bad", [3, None, b"cpmc", ["cpmc"]])
def test_a_name_that_is_not_a_str_is_a_type_error(bad):
    registry = _pruners()
    with pytest.raises(TypeError, match=f"^pruner name must be a str, got {type(bad).__name__}$"):
        registry.get(bad)
    with pytest.raises(TypeError, match="^pruner name must be a str"):
        registry.canonical(bad)
    with pytest.raises(TypeError, match="^pruner name must be a str"):
        registry.register(bad, 0)


@pytest.mark.parametrize("bad", ["", " ", " lead", "trail "])
def test_empty_or_padded_names_are_refused(bad):
    with pytest.raises(ValueError, match="^a pruner name must be non-empty"):
        Registry("pruner").register(bad, 0)


def test_a_taken_name_needs_replace_and_replacing_keeps_the_place():
    registry = _pruners()
    with pytest.raises(
        ValueError,
        match=r"^a pruner named 'cpmcpruner' is registered already \(pass replace=True\)$",
    ):
        registry.register("cpmcpruner", 9)
    assert registry.get("CPMCPruner") == 1  # unchanged by the refused call
    assert registry.register("cpmcpruner", 9, replace=True) == 9
    assert registry.names() == ["L2NormPruner", "cpmcpruner", "FPGMPruner"]
    assert registry.get("CPMCPRUNER") == 9 and len(registry) == 3


def test_an_empty_registry():
    registry: Registry[int] = Registry("preset")
    assert registry.names() == [] and len(registry) == 0 and list(registry) == []
    with pytest.raises(ValueError, match="^unknown preset 'vgg'; known presets: \\(none\\)$"):
        registry.get("vgg")


def test_repr_names_the_kind_and_the_entries():
    assert repr(_pruners(sort=True)) == (
        "Registry('pruner', ['CPMCPruner', 'FPGMPruner', 'L2NormPruner'])"
    )
