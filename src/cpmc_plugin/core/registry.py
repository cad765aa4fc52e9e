"""Named entries of one kind (models, criteria, presets, ...), looked up with one set of errors.

Example:
    >>> SHAPES = Registry("shape")
    >>> SHAPES.register("Square", 4)
    4
    >>> SHAPES.get(" square "), SHAPES.canonical("SQUARE"), SHAPES.names()
    (4, 'Square', ['Square'])
    >>> SHAPES.get("circle", hint=" (or 'poly:<n>')")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; known shapes: Square (or 'poly:<n>')
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; lookups fold case and outer spaces unless ``fold_case=False``.

    Args:
        kind: what one entry is, for messages (``"pruner"``, ``"sparse method"``).
        plural: ``kind``'s plural (default ``kind + "s"``).
        sort: :meth:`names` sorted instead of in registration order.
        fold_case: ``" L1 "`` finds ``"l1"``; without it a name must match exactly.

    Adopters dispatch on :meth:`canonical` (the registered spelling), never on the
    string the caller gave.
    """

    def __init__(
        self, kind: str, plural: str | None = None, *, sort: bool = False, fold_case: bool = True
    ) -> None:
        self.kind = kind
        self.plural = plural if plural is not None else kind + "s"
        self.sort = sort
        self.fold_case = fold_case
        self._entries: dict[str, tuple[str, T]] = {}  # key -> (registered name, entry)

    def _key(self, name: str) -> str:
        return name.strip().lower() if self.fold_case else name

    def _checked(self, name: object) -> str:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}")
        return name

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name`` and return it; a taken name needs ``replace=True``.

        Replacing keeps the entry's place in the registration order and takes the new
        spelling of the name.

        Example:
            >>> r = Registry("pruner")
            >>> _ = r.register("L1", 1)
            >>> r.register("l1", 2)
            Traceback (most recent call last):
            ...
            ValueError: a pruner named 'l1' is registered already (pass replace=True)
            >>> r.register("l1", 2, replace=True), r.names()
            (2, ['l1'])
        """
        self._checked(name)
        if not name or name != name.strip():
            raise ValueError(
                f"a {self.kind} name must be non-empty, without surrounding spaces, got {name!r}"
            )
        key = self._key(name)
        if key in self._entries and not replace:
            raise ValueError(
                f"a {self.kind} named {name!r} is registered already (pass replace=True)"
            )
        self._entries[key] = (name, entry)
        return entry

    def names(self) -> list[str]:
        """The registered names, in registration order (sorted if ``sort``)."""
        names = [name for name, _ in self._entries.values()]
        return sorted(names) if self.sort else names

    def canonical(self, name: object, *, hint: str = "") -> str:
        """The registered spelling of ``name``; ``TypeError`` / ``ValueError`` as :meth:`get`."""
        return self._lookup(name, hint)[0]

    def get(self, name: object, *, hint: str = "") -> T:
        """The entry registered as ``name``.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: no such entry; the message lists the known names, then ``hint``.
        """
        return self._lookup(name, hint)[1]

    def _lookup(self, name: object, hint: str) -> tuple[str, T]:
        key = self._key(self._checked(name))
        if key not in self._entries:
            known = ", ".join(self.names()) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {known}{hint}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
