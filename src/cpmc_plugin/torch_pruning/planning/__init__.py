"""The budget planner: units and floors, ties and pins, scoring, ``plan()`` and the
correction targets against a measured count.

Import a name from the module that defines it.
"""

__all__: list[str] = []
