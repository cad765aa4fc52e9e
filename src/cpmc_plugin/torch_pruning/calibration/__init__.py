"""``cpmc-auto``: the candidate grid (``grid``), the search over it on a pruner's trials
(``search``) and its report (``report``).

Import a name from the module that defines it.
"""

__all__: list[str] = []
