"""Checks of an NNI ``config_list`` for CPMC, before NNI wraps anything.

Accepted: the selectors, ``sparse_ratio``, ``max_sparse_ratio``, ``min_sparse_ratio``,
``global_group_id``, ``dependency_group_id``, ``granularity`` (``'out_channel'``, what
CPMC masks, or ``'default'``, which NNI resolves to it for weights) and
``internal_metric_block`` (the layer's output channels form that many equal blocks,
as NNI's ``auto_set_denpendency_group_ids`` writes for grouped convs; CPMC scores a
position as the mean over the blocks and removes it from every block). Refused, with
the reason: keys that describe masks CPMC does not make (``sparse_threshold``,
``align``, ``apply_method``, ``target_names``, ``target_settings``).
"""

from __future__ import annotations

from typing import Any

from ..core.validate import integer, number

__all__ = ["SUPPORTED_KEYS", "check_config_list"]

SELECTORS = ("op_types", "op_names", "op_names_re")
#: the keys of NNI 3.0's pruning config that CPMCPruner honours
SUPPORTED_KEYS = frozenset(
    {
        *SELECTORS,
        "exclude_op_names",
        "exclude_op_types",
        "exclude_op_names_re",
        "sparse_ratio",
        "max_sparse_ratio",
        "min_sparse_ratio",
        "global_group_id",
        "dependency_group_id",
        "granularity",
        "internal_metric_block",
    }
)
#: NNI keys that make no sense for whole-channel CPMC masks
UNSUPPORTED_KEYS = frozenset(
    {
        "sparse_threshold",
        "align",
        "apply_method",
        "target_names",
        "target_settings",
    }
)
#: the granularities CPMC's masks have: whole output channels (NNI's default for weights)
GRANULARITIES = ("default", "out_channel")


def _ratio(config: dict[str, Any], key: str, *, low_open: bool, high_open: bool) -> None:
    if key in config:
        number(key, config[key], minimum=0, maximum=1, low_open=low_open, high_open=high_open)


def _granularity(config: dict[str, Any]) -> None:
    value = config.get("granularity", "default")
    if isinstance(value, str) and value in GRANULARITIES:
        return
    raise ValueError(
        f"granularity={value!r} is not what CPMCPruner does: it masks whole output channels "
        "(rows of a weight), NNI's granularity 'out_channel' (also its 'default' for weights); "
        "'in_channel', 'per_channel' and block shapes mask other structures. Use "
        "granularity='out_channel' or leave it out"
    )


def _block(config: dict[str, Any]) -> None:
    """``internal_metric_block``: how many equal blocks a layer's output channels are
    scored and pruned in."""
    if "internal_metric_block" in config:
        integer("internal_metric_block", config["internal_metric_block"], minimum=1)


def check_config_list(config_list: Any, *, budget_given: bool) -> None:
    """Raise naming the problem unless CPMC can honour ``config_list``.

    Raises:
        TypeError: ``config_list`` is not a list, an entry not a dict, or a ratio or
            ``internal_metric_block`` of the wrong type (a bool is neither).
        ValueError: an empty list, a key CPMC does not honour, a missing selector or
            ``sparse_ratio``, or a value out of range.

    Example:
        >>> check_config_list([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], budget_given=False)
        >>> check_config_list([{"op_types": ["Conv2d"], "sparse_ratio": 1.5}], budget_given=False)
        Traceback (most recent call last):
        ...
        ValueError: sparse_ratio must be in [0, 1), got 1.5
    """
    if not isinstance(config_list, list):
        raise TypeError(
            f"config_list must be a non-empty list of dicts, got {type(config_list).__name__}"
        )
    if not config_list:
        raise ValueError("config_list must be a non-empty list of dicts, got []")
    for config in config_list:
        if not isinstance(config, dict):
            raise TypeError(f"every config_list entry must be a dict, got {config!r}")
        unknown = sorted(set(config) - SUPPORTED_KEYS)
        if unknown:
            refused = [k for k in unknown if k in UNSUPPORTED_KEYS]
            why = (
                f"CPMCPruner masks whole output channels and does not take {', '.join(refused)}"
                if refused
                else f"unknown config key(s) {', '.join(unknown)}"
            )
            raise ValueError(f"{why}; supported keys: {', '.join(sorted(SUPPORTED_KEYS))}")
        if not any(k in config for k in SELECTORS):
            raise ValueError(f"a config needs one of {', '.join(SELECTORS)}: {config!r}")
        _granularity(config)
        _block(config)
        _ratio(config, "sparse_ratio", low_open=False, high_open=True)
        _ratio(config, "max_sparse_ratio", low_open=True, high_open=False)
        _ratio(config, "min_sparse_ratio", low_open=False, high_open=True)
        if not budget_given and "sparse_ratio" not in config:
            raise ValueError(
                f"a config needs sparse_ratio unless flops_reduction is given: {config!r}"
            )
        if budget_given and "dependency_group_id" in config:
            raise ValueError(
                "dependency_group_id cannot be combined with flops_reduction: the FLOPs "
                "budget ties coupled channels itself; use sparse_ratio with dependency groups"
            )
