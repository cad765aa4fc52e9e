"""The FLOPs and parameter cost model the planner ranks against: its types (``types``),
the per-layer cost terms (``terms``), layers measured on pruned copies (``measured``),
the host's MAC count (``counting``) and attention's matmuls (``attention``).

Import a name from the module that defines it.
"""

__all__: list[str] = []
