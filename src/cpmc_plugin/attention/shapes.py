"""Keep a transformer's own shape attributes in line with its layers after pruning.

torch-pruning changes the layers' tensors; the attributes that forward passes read
(torchvision ViT's ``hidden_dim``, timm's ``num_heads``, Hugging Face's
``num_key_value_groups`` and config) stay as they were, and the pruned model either
fails or computes something else. :func:`sync_shape_attributes` sets them from the
layers' current widths. It only reads shapes, so calling it again, or after the model
was restored, is always right. No optional library is imported: modules are
recognised by the attributes they carry.

What it sets:

- torchvision ``VisionTransformer``: ``hidden_dim`` (``conv_proj``'s outputs).
- timm ``Attention`` (packed ``qkv``): ``num_heads`` and ``attn_dim``; a timm
  ``VisionTransformer``: ``embed_dim``, ``num_features`` and ``head_hidden_size``.
- Hugging Face LLaMA-style attention (``q_proj``, ``k_proj``, ``head_dim``):
  ``num_key_value_groups``, ``num_heads``, ``num_attention_heads`` and
  ``num_key_value_heads``, where present;
  BERT/ViT-style self-attention (``query``, ``attention_head_size``):
  ``num_attention_heads`` and ``all_head_size``.
- A Hugging Face config: ``hidden_size``, ``num_attention_heads``,
  ``num_key_value_heads``, ``intermediate_size`` and ``head_dim``, from the first layer.
  The config holds one value per field; :func:`non_uniform_fields` names the fields
  whose layers now disagree (``save_pretrained`` cannot describe such a model).
  Tied input and output embeddings are tied again.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["non_uniform_fields", "sync_shape_attributes"]


def _linear(module: Any, name: str) -> nn.Linear | None:
    layer = getattr(module, name, None)
    return layer if isinstance(layer, nn.Linear) else None


def _set(obj: Any, name: str, value: int) -> None:
    if hasattr(obj, name):
        setattr(obj, name, int(value))


def _sync_attention(module: Any) -> None:
    qkv = _linear(module, "qkv")
    if qkv is not None and isinstance(getattr(module, "head_dim", None), int):  # timm
        _set(module, "num_heads", qkv.out_features // (3 * module.head_dim))
        _set(module, "attn_dim", qkv.out_features // 3)
    q, k = _linear(module, "q_proj"), _linear(module, "k_proj")
    if q is not None and k is not None and isinstance(getattr(module, "head_dim", None), int):
        heads, kv = q.out_features // module.head_dim, k.out_features // module.head_dim
        if kv > 0:  # Hugging Face q_proj-style (LLaMA, Qwen2, ViT)
            _set(module, "num_key_value_groups", heads // kv)
            _set(module, "num_heads", heads)
            _set(module, "num_attention_heads", heads)
            _set(module, "num_key_value_heads", kv)
    query = _linear(module, "query")
    size = getattr(module, "attention_head_size", None)
    if query is not None and isinstance(size, int) and size > 0:  # BERT / ViT-style
        _set(module, "num_attention_heads", query.out_features // size)
        _set(module, "all_head_size", query.out_features)


def _config_widths(model: nn.Module) -> dict[str, list[int]]:
    """Each config field's value in every layer, read from the layers."""
    widths: dict[str, list[int]] = {}
    module: Any
    for module in model.modules():
        q, k = _linear(module, "q_proj"), _linear(module, "k_proj")
        head_dim = getattr(module, "head_dim", None)
        if q is not None and k is not None and isinstance(head_dim, int):
            widths.setdefault("num_attention_heads", []).append(q.out_features // head_dim)
            widths.setdefault("num_key_value_heads", []).append(k.out_features // head_dim)
            widths.setdefault("head_dim", []).append(head_dim)
        query, size = _linear(module, "query"), getattr(module, "attention_head_size", None)
        if query is not None and isinstance(size, int) and size > 0:
            widths.setdefault("num_attention_heads", []).append(query.out_features // size)
        wide = _linear(module, "gate_proj") or _linear(
            getattr(module, "intermediate", None), "dense"
        )
        if wide is None and _linear(module, "fc2") is not None:
            wide = _linear(module, "fc1")
        if wide is not None:
            widths.setdefault("intermediate_size", []).append(wide.out_features)
    hidden = _hidden_size(model)
    if hidden is not None:
        widths["hidden_size"] = [hidden]
    return widths


def _hidden_size(model: nn.Module) -> int | None:
    embeddings = _first_call(model, "get_input_embeddings")
    if isinstance(embeddings, nn.Embedding):
        return int(embeddings.embedding_dim)
    projection = getattr(embeddings, "projection", None)  # a ViT's patch embeddings
    if isinstance(projection, nn.Conv2d):
        return int(projection.out_channels)
    return None


def non_uniform_fields(model: nn.Module) -> list[str]:
    """Config fields whose layers no longer agree (one config value cannot hold them)."""
    return sorted(f for f, values in _config_widths(model).items() if len(set(values)) > 1)


def _sync_config(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "hidden_size"):
        return
    for field, values in _config_widths(model).items():
        # head_dim is set even where the config derives it (hidden_size // heads): the
        # attention of LLaMA, Qwen2 and ViT reads it first, and pruning breaks the rule
        setattr(config, field, int(values[0]))
    if getattr(config, "tie_word_embeddings", False):
        inputs = _first_call(model, "get_input_embeddings")
        outputs = _first_call(model, "get_output_embeddings")
        if (
            isinstance(inputs, nn.Embedding)
            and isinstance(outputs, nn.Linear)
            and outputs.weight is not inputs.weight
            and outputs.weight.shape == inputs.weight.shape
        ):
            outputs.weight = inputs.weight  # pruning each side made two tensors of one


def _first_call(model: nn.Module, name: str) -> Any:
    get = getattr(model, name, None)
    try:
        return get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None


def sync_shape_attributes(model: nn.Module) -> None:
    """Set the model's shape attributes from its layers' widths (see the module text).

    Example:
        >>> import torch
        >>> class Attention(torch.nn.Module):  # timm's layout: a packed qkv projection
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.num_heads, self.head_dim, self.attn_dim = 4, 8, 32
        ...         self.qkv = torch.nn.Linear(32, 96)
        >>> attention = Attention()
        >>> attention.qkv = torch.nn.Linear(32, 72)  # one head pruned
        >>> sync_shape_attributes(attention)
        >>> attention.num_heads, attention.attn_dim
        (3, 24)
    """
    module: Any
    for module in model.modules():
        _sync_attention(module)
        conv = getattr(module, "conv_proj", None)
        if isinstance(conv, nn.Conv2d) and hasattr(module, "hidden_dim"):  # torchvision ViT
            module.hidden_dim = int(conv.out_channels)
        patch = getattr(getattr(module, "patch_embed", None), "proj", None)
        if isinstance(patch, nn.Conv2d) and hasattr(module, "embed_dim"):  # timm ViT
            for name in ("embed_dim", "num_features", "head_hidden_size"):
                _set(module, name, patch.out_channels)
    _sync_config(model)
