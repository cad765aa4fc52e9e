"""Small transformers with random weights, built from configs (no download)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

#: name -> builder returning (model in eval mode, example inputs)
Builder = Callable[[], tuple[nn.Module, Any]]


def torchvision_vit() -> tuple[nn.Module, Any]:
    models = pytest.importorskip("torchvision.models")
    vit = models.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    return vit.eval(), torch.randn(1, 3, 32, 32)


def timm_model(name: str) -> Builder:
    def build() -> tuple[nn.Module, Any]:
        timm = pytest.importorskip("timm")
        model = timm.create_model(
            name, pretrained=False, depth=2, img_size=32, patch_size=8, num_classes=10
        )
        return model.eval(), torch.randn(1, 3, 32, 32)

    return build


def hf_vit() -> tuple[nn.Module, Any]:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=10,
        attn_implementation="eager",
    )
    return transformers.ViTForImageClassification(config).eval(), torch.randn(1, 3, 32, 32)


def hf_bert() -> tuple[nn.Module, Any]:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=3,
        attn_implementation="eager",
    )
    model = transformers.BertForSequenceClassification(config)
    return model.eval(), torch.randint(0, 100, (1, 8))


def hf_causal(kind: str, heads: int = 8, kv_heads: int = 2, **extra: Any) -> Builder:
    def build() -> tuple[nn.Module, Any]:
        transformers = pytest.importorskip("transformers")
        config_class, model_class = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[kind]
        options = dict(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=8,
            attn_implementation="eager",
            use_cache=False,
            tie_word_embeddings=False,
        )
        options.update(extra)
        model = model_class(config_class(**options))
        return model.eval(), torch.randint(0, 128, (1, 12))

    return build


ZOO: dict[str, Builder] = {
    "torchvision-vit": torchvision_vit,
    "timm-vit-tiny": timm_model("vit_tiny_patch16_224"),
    "timm-deit-tiny": timm_model("deit_tiny_patch16_224"),
    "hf-vit": hf_vit,
    "hf-bert": hf_bert,
    "hf-llama-gqa": hf_causal("llama"),
    "hf-qwen2-gqa": hf_causal("qwen2"),
}


def logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output
