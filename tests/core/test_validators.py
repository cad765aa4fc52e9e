"""The one validator set: wrong type -> TypeError, wrong value -> ValueError, the option named."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from cpmc_plugin.core import validate as v


@pytest.mark.parametrize(
    ("kwargs", "value", "expected"),
    [
        ({}, 3, 3.0),
        ({}, -2.5, -2.5),
        ({"minimum": 0}, 0, 0.0),
        ({"minimum": 0, "low_open": True}, 1e-9, 1e-9),
        ({"maximum": 1}, 1, 1.0),
        ({"minimum": 0, "maximum": 1, "high_open": True}, 0, 0.0),
        ({}, np.float32(0.5), 0.5),
        ({}, np.int64(4), 4.0),
    ],
)
def test_number_accepts_and_returns_a_float(kwargs, value, expected):
    got = v.number("x", value, **kwargs)
    assert type(got) is float and got == expected


@pytest.mark.parametrize(
    ("kwargs", "value", "text"),
    [
        ({}, math.nan, "x must be a finite number, got nan"),
        ({}, math.inf, "x must be a finite number, got inf"),
        ({"minimum": 0}, -1, "x must be a finite number >= 0, got -1"),
        ({"minimum": 0, "low_open": True}, 0, "x must be a finite number > 0, got 0"),
        ({"maximum": 2.5}, 3, "x must be a finite number <= 2.5, got 3"),
        ({"maximum": 1, "high_open": True}, 1.0, "x must be a finite number < 1, got 1.0"),
        ({"minimum": 0, "maximum": 1, "low_open": True}, 0, "x must be in (0, 1], got 0"),
        ({"minimum": 0, "maximum": 1, "high_open": True}, 1, "x must be in [0, 1), got 1"),
        ({"minimum": 0, "maximum": 1}, -math.inf, "x must be in [0, 1], got -inf"),
    ],
)
def test_number_refuses_values_outside_with_the_bounds_in_the_text(kwargs, value, text):
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        v.number("x", value, **kwargs)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "True"),
        ("0.1", "'0.1'"),
        (None, "None"),
        (torch.tensor(0.5), "Tensor"),
        ([1], "list"),
    ],
)
def test_number_refuses_other_types_as_type_errors(value, shown):
    with pytest.raises(
        TypeError, match=f"^lam must be a finite number >= 0, got {re.escape(shown)}$"
    ):
        v.number("lam", value, minimum=0)


def test_a_long_value_is_shortened_in_the_message():
    with pytest.raises(TypeError) as caught:
        v.number("x", "y" * 500)
    assert len(str(caught.value)) < 100 and str(caught.value).endswith("...")


def test_an_empty_name_starts_the_text_at_must_be():
    with pytest.raises(ValueError, match=r"^must be in \(0, 1\), got 1\.2$"):
        v.fraction("", 1.2)
    with pytest.raises(ValueError, match=r"^must be an integer >= 1, got 0$"):
        v.integer("", 0, minimum=1)


@pytest.mark.parametrize(
    ("kwargs", "bad", "text"),
    [
        ({}, 0, "r must be in (0, 1), got 0"),
        ({}, 1, "r must be in (0, 1), got 1"),
        ({"zero": True}, 1, "r must be in [0, 1), got 1"),
        ({"one": True}, 0.0, "r must be in (0, 1], got 0.0"),
        ({"zero": True, "one": True}, 1.5, "r must be in [0, 1], got 1.5"),
    ],
)
def test_fraction_ends(kwargs, bad, text):
    assert v.fraction("r", 0.25, **kwargs) == 0.25
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        v.fraction("r", bad, **kwargs)


def test_fraction_admits_the_ends_it_is_told_to():
    assert v.fraction("r", 0, zero=True) == 0.0
    assert v.fraction("r", 1, one=True) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "value", "error", "text"),
    [
        ({"minimum": 1}, 0, ValueError, "n must be an integer >= 1, got 0"),
        ({"maximum": 3}, 4, ValueError, "n must be an integer <= 3, got 4"),
        ({"minimum": 0, "maximum": 3}, -1, ValueError, "n must be an integer in [0, 3], got -1"),
        ({"minimum": 1}, 2.0, TypeError, "n must be an integer >= 1, got 2.0"),
        ({"minimum": 1}, True, TypeError, "n must be an integer >= 1, got True"),
        ({}, "2", TypeError, "n must be an integer, got '2'"),
    ],
)
def test_integer_refuses(kwargs, value, error, text):
    with pytest.raises(error, match=f"^{re.escape(text)}$"):
        v.integer("n", value, **kwargs)


def test_integer_returns_a_plain_int():
    for value in (3, np.int64(3)):
        got = v.integer("n", value, minimum=0, maximum=3)
        assert type(got) is int and got == 3


def test_optional_integer():
    assert v.optional_integer("round_to", None, minimum=1) is None
    assert v.optional_integer("round_to", 4, minimum=1) == 4
    with pytest.raises(ValueError, match=r"^round_to must be None or an integer >= 1, got 0$"):
        v.optional_integer("round_to", 0, minimum=1)
    with pytest.raises(TypeError, match=r"^round_to must be None or an integer >= 1, got '2'$"):
        v.optional_integer("round_to", "2", minimum=1)


@pytest.mark.parametrize("bad", [1, 0, "yes", None, np.bool_(True)])
def test_flag_takes_only_true_and_false(bad):
    assert v.flag("scale", True) is True and v.flag("scale", False) is False
    with pytest.raises(TypeError, match=r"^scale must be True or False, got "):
        v.flag("scale", bad)


def test_one_of_returns_the_allowed_entry_and_compares_types():
    allowed = ("max-min", "l2", None)
    assert v.one_of("normalizer", "l2", allowed) == "l2"
    assert v.one_of("normalizer", None, allowed) is None
    with pytest.raises(
        ValueError, match=r"^normalizer must be one of 'max-min', 'l2', None, got 'z'$"
    ):
        v.one_of("normalizer", "z", allowed)
    with pytest.raises(TypeError, match=r"^normalizer must be one of .*, got 3$"):
        v.one_of("normalizer", 3, allowed)
    # True == 1 in Python; a flag is not the integer 1 here
    with pytest.raises(TypeError, match=r"^p must be one of 1, 2, got True$"):
        v.one_of("p", True, (1, 2))


def test_text():
    assert v.text("name", "resnet20") == "resnet20"
    with pytest.raises(TypeError, match=r"^model name must be a str, got int$"):
        v.text("model name", 3)


def test_module():
    layer = nn.Linear(1, 1)
    assert v.module("model", layer) is layer
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got function$"):
        v.module("model", lambda x: x)


def test_layers_of():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    assert v.layers_of(net, None) == []
    got = v.layers_of(net, (m for m in [net[2], net[0]]))
    assert got == [net[2], net[0]] and isinstance(got, list)
    assert v.layers_of(nn.DataParallel(net), [net[0]]) == [net[0]]  # DDP unwrapped
    text = "^ignored_layers must hold modules of the model, got "
    with pytest.raises(ValueError, match=text + "Linear$"):
        v.layers_of(net, [net[0], nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=text + "str$"):
        v.layers_of(net, ["0"])
    with pytest.raises(TypeError, match=r"^ignored_layers must be a list of modules .*, got str$"):
        v.layers_of(net, "0")
    with pytest.raises(TypeError, match=r"^skip must be a list of modules .*, got int$"):
        v.layers_of(net, 3, name="skip")
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got list$"):
        v.layers_of([net], [])


def test_function():
    def finetune(model, step):
        return None

    assert v.function("finetune_fn", finetune, call="finetune_fn(model, step)") is finetune
    with pytest.raises(TypeError, match=r"^finetune_fn must be callable, got NoneType$"):
        v.function("finetune_fn", None)
    with pytest.raises(TypeError, match=r"^f must be callable as f\(x\), got int$"):
        v.function("f", 3, call="f(x)")
