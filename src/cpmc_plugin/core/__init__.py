"""The host-free core of cpmc-plugin: CPMC's math, budgets, validators and registries.

Everything under ``cpmc_plugin.core`` imports only the standard library, ``torch``
and other ``cpmc_plugin.core`` modules. It never imports torch-pruning or NNI, nor
another folder of this package: those adapters (:mod:`cpmc_plugin.torch_pruning`,
:mod:`cpmc_plugin.nni`) build on the core, not the other way round, so the core
loads, and can be tested, without either host. ``tests/test_layout.py`` checks this.

This ``__init__`` imports nothing; import names from the module that defines them,
e.g. ``from cpmc_plugin.core.validate import number``.
"""

__all__: list[str] = []
