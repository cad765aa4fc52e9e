"""``head_options(model)``: what :class:`~cpmc_plugin.CPMCPruner` needs for a transformer.

``CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))`` is the whole
recipe for the architectures listed in :func:`head_options`. Modules are recognised by
their attributes, so neither ``transformers`` nor ``timm`` is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from ..core.validate import layers_of

__all__ = ["head_options", "logits_of"]


def logits_of(output: Any) -> Any:
    """The ``logits`` of a Hugging Face model output (torch-pruning traces through them)."""
    return output.logits


def _attr(module: Any, name: str) -> Any:
    """An attribute of a module whose class this file does not import."""
    return getattr(module, name)


def _linear(module: Any, name: str) -> nn.Linear | None:
    layer = getattr(module, name, None)
    return layer if isinstance(layer, nn.Linear) else None


def _torchvision_vit(model: nn.Module) -> dict[str, Any] | None:
    if not (hasattr(model, "conv_proj") and hasattr(model, "hidden_dim")):
        return None
    attention = {
        m: int(m.num_heads) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
    }
    if not attention:
        return None
    # nn.MultiheadAttention packs its heads into the hidden width: heads stay, their
    # dims shrink with the hidden channels (in steps of one channel per head)
    return {
        "num_heads": attention,
        "prune_num_heads": False,
        "prune_head_dims": True,
        "output_layers": [model.heads],
    }


def _timm_vit(model: nn.Module) -> dict[str, Any] | None:
    attention: dict[nn.Module, int] = {
        _attr(m, "qkv"): int(_attr(m, "num_heads"))
        for m in model.modules()
        if _linear(m, "qkv") is not None and isinstance(getattr(m, "num_heads", None), int)
    }
    head = getattr(model, "head", None)
    if not attention or not hasattr(model, "patch_embed") or not isinstance(head, nn.Module):
        return None
    return {"num_heads": attention, "output_layers": [head]}


def _hf_projections(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    layers: list[Any] = [
        m
        for m in model.modules()
        if all(_linear(m, n) is not None for n in ("q_proj", "k_proj", "v_proj"))
        and isinstance(getattr(m, "head_dim", None), int)
    ]
    output = _linear(model, "lm_head") or _linear(model, "classifier")
    if config is None or not layers or output is None:
        return None
    heads: dict[nn.Module, int] = {}
    for attention in layers:
        d = attention.head_dim
        heads[attention.q_proj] = attention.q_proj.out_features // d
        heads[attention.k_proj] = attention.k_proj.out_features // d
        heads[attention.v_proj] = attention.v_proj.out_features // d
    mlps = [_mlp_input(m) for m in model.modules() if _mlp_input(m) is not None]
    return {
        "num_heads": heads,
        "output_layers": [output],
        "output_transform": logits_of,
        "uniform_layers": [[a.q_proj for a in layers], mlps],
        "hidden_divisible_by_heads": True,  # the configs validate it when loaded
    }


def _mlp_input(module: nn.Module) -> nn.Linear | None:
    """The layer that widens an MLP block: ``gate_proj`` (LLaMA) or ``fc1`` (ViT)."""
    gate = _linear(module, "gate_proj")
    if gate is not None:
        return gate
    if _linear(module, "fc2") is not None:
        return _linear(module, "fc1")
    return None


def _hf_bert_like(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    layers: list[Any] = [
        m
        for m in model.modules()
        if all(_linear(m, n) is not None for n in ("query", "key", "value"))
        and isinstance(getattr(m, "attention_head_size", None), int)
    ]
    output = _linear(model, "classifier")
    if config is None or not layers or output is None:
        return None
    heads: dict[nn.Module, int] = {}
    for attention in layers:
        n = attention.query.out_features // attention.attention_head_size
        for projection in (attention.query, attention.key, attention.value):
            heads[projection] = n
    mlps = [
        _attr(m, "intermediate").dense
        for m in model.modules()
        if _linear(getattr(m, "intermediate", None), "dense") is not None
    ]
    return {
        "num_heads": heads,
        "output_layers": [output],
        "output_transform": logits_of,
        "uniform_layers": [[a.query for a in layers], mlps],
    }


_KNOWN = (_torchvision_vit, _timm_vit, _hf_projections, _hf_bert_like)


def head_options(
    model: nn.Module, ignored_layers: Sequence[nn.Module] | None = None
) -> dict[str, Any]:
    """The keyword arguments that make :class:`~cpmc_plugin.CPMCPruner` prune ``model``.

    Known architectures:

    - torchvision ``VisionTransformer`` (``vit_b_16``, ...): ``nn.MultiheadAttention``
      keeps its heads and their dims shrink with the hidden width;
    - timm ``VisionTransformer`` (ViT, DeiT): whole heads of each packed ``qkv``;
    - Hugging Face models with ``q_proj``/``k_proj``/``v_proj`` attention and an
      ``lm_head`` or ``classifier``: LLaMA-style causal LMs (LLaMA, Qwen2, Mistral, ...,
      with the attention they come with: ``CPMCPruner`` traces them with eager attention
      and switches back; with grouped-query attention whole query heads go and every
      key/value head stays) and ``ViTForImageClassification``: whole heads;
    - Hugging Face BERT-style encoders (``query``/``key``/``value``) with a
      ``classifier``: whole heads.

    Besides the host's head options (``num_heads``, and ``prune_num_heads`` /
    ``prune_head_dims`` where they differ from the pruner's defaults) it names the
    layer that produces the output in ``output_layers`` (never pruned; the pruner adds
    it to ``ignored_layers``, so a caller can still pass ``ignored_layers=`` of its own
    beside ``**head_options(model)``), reads Hugging Face outputs' ``logits``
    (``output_transform``), and for Hugging Face models lists ``uniform_layers``: all
    layers keep the same heads and MLP width, because one config describes them all
    (so that ``save_pretrained`` and ``from_pretrained`` round-trip).

    Args:
        model: the transformer to prune.
        ignored_layers: more layers to keep whole, returned as ``ignored_layers``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``ignored_layers`` is not a
            list of modules.
        ValueError: an architecture it does not know (the message says what to pass), or
            ``ignored_layers`` holds a module of another model.

    Example:
        >>> import torch
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=8,
        ...                         mlp_dim=16, num_classes=3)
        >>> options = head_options(vit)
        >>> list(options["num_heads"].values()), options["output_layers"] == [vit.heads]
        ([2], True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    extra = None if ignored_layers is None else layers_of(model, ignored_layers)
    for known in _KNOWN:
        options = known(model)
        if options is not None:
            if extra is not None:
                options["ignored_layers"] = extra
            return options
    raise ValueError(
        f"head_options does not know {type(model).__name__}. Pass the head options "
        "yourself: num_heads={projection: heads} for each query, key and value projection "
        "(or packed qkv projection), and ignored_layers=[the output layer]; add "
        "output_transform=lambda out: out.logits for a model that returns an output object"
    )
