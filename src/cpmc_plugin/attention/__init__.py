"""Transformers under a budget: the model's shape attributes after pruning, and the
head options of the architectures the package knows.

Nothing here imports ``transformers`` or ``timm``: modules are recognised by their
attributes, so the package works without the optional extras.
"""

from __future__ import annotations

from .eager import attention_implementation, eager_attention
from .options import head_options, logits_of
from .shapes import non_uniform_fields, sync_shape_attributes

__all__ = [
    "attention_implementation",
    "eager_attention",
    "head_options",
    "logits_of",
    "non_uniform_fields",
    "sync_shape_attributes",
]
