"""The package's one set of argument checks.

One rule everywhere: a value of the wrong type (``bool`` included, which is never a
number or an integer here) raises ``TypeError``; a value of the right type that is
not allowed (NaN and infinities included) raises ``ValueError``. Both say
``"{name} must be {what}, got {value}"``; with ``name == ""`` (argparse types) the
text starts at ``"must be"``. Each check returns the value, converted (``float``,
``int``), so that a caller writes ``lam = number("lam", lam, minimum=0)``.

Example:
    >>> number("lam", 1e-4, minimum=0)
    0.0001
    >>> fraction("flops_reduction", 1.2)
    Traceback (most recent call last):
    ...
    ValueError: flops_reduction must be in (0, 1), got 1.2
    >>> integer("iterative_steps", 2.0, minimum=1)
    Traceback (most recent call last):
    ...
    TypeError: iterative_steps must be an integer >= 1, got 2.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch.nn as nn

from .layers import unwrap

__all__ = [
    "flag",
    "fraction",
    "function",
    "integer",
    "layers_of",
    "module",
    "number",
    "one_of",
    "optional_integer",
    "text",
]

T = TypeVar("T")

_SHOWN = 60  # the longest repr a message quotes


def _shown(value: object) -> str:
    """``repr`` of a short scalar; the type's name for anything else (a tensor, a model)."""
    if value is None or isinstance(value, (str, bytes, int, float, complex)):
        text_ = repr(value)
        return text_ if len(text_) <= _SHOWN else text_[: _SHOWN - 3] + "..."
    return type(value).__name__


def _message(name: str, what: str, got: str) -> str:
    return f"{name} must be {what}, got {got}" if name else f"must be {what}, got {got}"


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the bounds (``low_open``: ``> minimum``).

    Example:
        >>> number("lr", 0, minimum=0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got 0
        >>> number("alpha", "0.1", minimum=0)
        Traceback (most recent call last):
        ...
        TypeError: alpha must be a finite number >= 0, got '0.1'
    """
    if minimum is not None and maximum is not None:
        what = f"in {'(' if low_open else '['}{_bound(minimum)}, {_bound(maximum)}"
        what += ")" if high_open else "]"
    elif minimum is not None:
        what = f"a finite number {'>' if low_open else '>='} {_bound(minimum)}"
    elif maximum is not None:
        what = f"a finite number {'<' if high_open else '<='} {_bound(maximum)}"
    else:
        what = "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_message(name, what, _shown(value)))
    x = float(value)
    low = minimum is None or (x > minimum if low_open else x >= minimum)
    high = maximum is None or (x < maximum if high_open else x <= maximum)
    if not (math.isfinite(x) and low and high):
        raise ValueError(_message(name, what, _shown(value)))
    return x


def fraction(name: str, value: object, *, zero: bool = False, one: bool = False) -> float:
    """``value`` in ``(0, 1)``; ``zero`` / ``one`` admit that end.

    Example:
        >>> fraction("max_pruning_ratio", 1, one=True)
        1.0
        >>> fraction("ratio", 0, one=True)
        Traceback (most recent call last):
        ...
        ValueError: ratio must be in (0, 1], got 0
    """
    return number(name, value, minimum=0, maximum=1, low_open=not zero, high_open=not one)


def _integer_what(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" if maximum is None else f"an integer <= {maximum}"


def _integer(name: str, value: object, what: str, low: int | None, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_message(name, what, _shown(value)))
    n = int(value)
    if (low is not None and n < low) or (high is not None and n > high):
        raise ValueError(_message(name, what, _shown(value)))
    return n


def integer(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int within the bounds (both included); ``2.0`` and ``True`` are not ints.

    Example:
        >>> integer("k", 0, minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: k must be an integer >= 1, got 0
    """
    return _integer(name, value, _integer_what(minimum, maximum), minimum, maximum)


def optional_integer(name: str, value: object, *, minimum: int | None = None) -> int | None:
    """``None``, or ``value`` as an int ``>= minimum``.

    Example:
        >>> optional_integer("round_to", None, minimum=1) is None
        True
        >>> optional_integer("round_to", "2", minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: round_to must be None or an integer >= 1, got '2'
    """
    if value is None:
        return None
    return _integer(name, value, "None or " + _integer_what(minimum, None), minimum, None)


def flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``; ``1`` and ``"yes"`` are TypeErrors.

    Example:
        >>> flag("scale", 1)
        Traceback (most recent call last):
        ...
        TypeError: scale must be True or False, got 1
    """
    if not isinstance(value, bool):
        raise TypeError(_message(name, "True or False", _shown(value)))
    return value


def one_of(name: str, value: object, allowed: Sequence[T]) -> T:
    """The entry of ``allowed`` equal to ``value`` (compared by type and value).

    A value of a type no entry has is a ``TypeError``, another value a ``ValueError``.

    Example:
        >>> one_of("kind", "l20", ("l21", "l20"))
        'l20'
        >>> one_of("normalizer", "z", ("max-min", "l2", None))
        Traceback (most recent call last):
        ...
        ValueError: normalizer must be one of 'max-min', 'l2', None, got 'z'
    """
    for entry in allowed:
        if type(entry) is type(value) and entry == value:
            return entry
    what = "one of " + ", ".join(repr(a) for a in allowed)
    error = ValueError if any(type(a) is type(value) for a in allowed) else TypeError
    raise error(_message(name, what, _shown(value)))


def text(name: str, value: object) -> str:
    """``value`` if it is a ``str``.

    Example:
        >>> text("model name", 3)
        Traceback (most recent call last):
        ...
        TypeError: model name must be a str, got int
    """
    if not isinstance(value, str):
        raise TypeError(_message(name, "a str", type(value).__name__))
    return value


def module(name: str, value: object) -> nn.Module:
    """``value`` if it is a ``torch.nn.Module``.

    Example:
        >>> module("model", lambda x: x)
        Traceback (most recent call last):
        ...
        TypeError: model must be a torch.nn.Module, got function
    """
    if not isinstance(value, nn.Module):
        raise TypeError(_message(name, "a torch.nn.Module", type(value).__name__))
    return value


def layers_of(
    model: nn.Module, layers: Iterable[object] | None, *, name: str = "ignored_layers"
) -> list[nn.Module]:
    """``layers`` (``None``: none) as a list of modules of ``model`` (DDP unwrapped).

    A non-module entry is a ``TypeError``, a module of another model a ``ValueError``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> layers_of(net, [net[0]]) == [net[0]], layers_of(net, None)
        (True, [])
        >>> layers_of(net, [nn.Linear(2, 2)])
        Traceback (most recent call last):
        ...
        ValueError: ignored_layers must hold modules of the model, got Linear
    """
    module("model", model)
    if layers is None:
        return []
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(_message(name, "a list of modules of the model", type(layers).__name__))
    known = {id(m) for m in unwrap(model).modules()}
    found: list[nn.Module] = []
    what = "hold modules of the model"
    for layer in layers:
        got = type(layer).__name__
        if not isinstance(layer, nn.Module):
            raise TypeError(f"{name} must {what}, got {got}")
        if id(layer) not in known:
            raise ValueError(f"{name} must {what}, got {got}")
        found.append(layer)
    return found


def function(name: str, value: object, *, call: str = "") -> Callable[..., Any]:
    """``value`` if it is callable; ``call`` shows how it will be called.

    Example:
        >>> function("finetune_fn", 3, call="finetune_fn(model, step)")
        Traceback (most recent call last):
        ...
        TypeError: finetune_fn must be callable as finetune_fn(model, step), got int
    """
    if not callable(value):
        what = f"callable as {call}" if call else "callable"
        raise TypeError(_message(name, what, type(value).__name__))
    return value
