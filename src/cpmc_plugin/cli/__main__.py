"""``python -m cpmc_plugin.cli``: the ``cpmc-prune`` command (also under ``torchrun``)."""

import sys

from .commands import main

__all__: list[str] = []

sys.exit(main())
