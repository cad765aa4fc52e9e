"""Graph tools on torch-pruning's ``DependencyGraph``: building it, root-index maps,
coupling, the RoPE concat shim, removal in order, bias folding, weight groups, group
statistics and attention heads. ``sparse/`` and ``nni/`` import these too.

Import a name from the module that defines it.
"""

__all__: list[str] = []
