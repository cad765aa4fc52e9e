"""Argparse types of ``cpmc-prune``, on :mod:`cpmc_plugin.core.validate`'s checks.

Each turns the option's text into a value, or raises ``argparse.ArgumentTypeError`` with
the check's message, which argparse prints after the option's name.

Example:
    >>> positive_int("3")
    3
    >>> fraction("1.2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be in (0, 1), got 1.2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ..core import validate

__all__ = ["fraction", "non_negative", "non_negative_int", "positive_int", "unit_interval"]

T = TypeVar("T")


def _argtype(
    convert: Callable[[str], T], noun: str, check: Callable[[str, T], T], name: str
) -> Callable[[str], T]:
    """An argparse type: ``convert`` the text (else "'x' is not {noun}"), then ``check`` it.

    A failed check says "must be ..., got <the text as typed>".
    """

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        try:
            return check("", value)
        except (TypeError, ValueError) as error:  # the check's words, the user's text
            what = str(error).rpartition(", got ")[0]
            raise argparse.ArgumentTypeError(f"{what}, got {text}") from None

    parse.__name__ = parse.__qualname__ = name  # argparse names the type in its messages
    return parse


#: a fraction in (0, 1): a budget or a prune rate
fraction = _argtype(float, "a number", validate.fraction, "fraction")
#: a fraction in (0, 1]
unit_interval = _argtype(
    float, "a number", lambda n, v: validate.fraction(n, v, one=True), "unit_interval"
)
#: a finite number >= 0
non_negative = _argtype(
    float, "a number", lambda n, v: validate.number(n, v, minimum=0), "non_negative"
)
#: an integer >= 1
positive_int = _argtype(
    int, "an integer", lambda n, v: validate.integer(n, v, minimum=1), "positive_int"
)
#: an integer >= 0
non_negative_int = _argtype(
    int, "an integer", lambda n, v: validate.integer(n, v, minimum=0), "non_negative_int"
)
