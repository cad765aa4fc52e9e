"""Transformers under an exact budget: heads as units, counts, shapes, save and load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner, fixed_graphs, head_options
from cpmc_plugin.attention import non_uniform_fields, sync_shape_attributes
from cpmc_plugin.torch_pruning.cost.counting import count_model
from tests.helpers import assert_unchanged, budget_tolerance, model_state
from tests.transformer_zoo import ZOO, hf_causal, logits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_cpmc_pruner_meets_the_budget(name: str) -> None:
    model, x = ZOO[name]()
    pruner = CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))
    pruner.step()
    report = pruner.report()
    tolerance = budget_tolerance(pruner)  # 0.5 pp, or one unit on tiny models
    assert abs(report.macs_reduction - 0.3) <= tolerance + 1e-9
    assert torch.isfinite(logits(model(x))).all()
    assert report.macs_after == pytest.approx(count_model(model, x).macs)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_cpmc_importance_inside_meta_pruner(name: str) -> None:
    model, x = ZOO[name]()
    options = head_options(model)
    options.pop("uniform_layers", None)  # CPMCPruner options
    options.pop("hidden_divisible_by_heads", None)
    options["ignored_layers"] = options.pop("output_layers")  # the host's name for them
    options.setdefault("prune_num_heads", True)
    options.setdefault("prune_head_dims", False)
    before = tp.utils.count_ops_and_params(model, x)
    with fixed_graphs():
        pruner = tp.pruner.MetaPruner(
            model, x, CPMCImportance(x), pruning_ratio=0.25, head_pruning_ratio=0.25, **options
        )
    pruner.step()
    sync_shape_attributes(model)
    out = logits(model(x))
    assert torch.isfinite(out).all()
    after = tp.utils.count_ops_and_params(model, x)
    assert after[1] < before[1]  # parameters went


@pytest.mark.parametrize("name", sorted(ZOO))
def test_refusal_leaves_the_model_untouched(name: str) -> None:
    model, x = ZOO[name]()
    state = model_state(model)
    with pytest.raises(ValueError, match="cannot be met"):
        CPMCPruner(model, x, flops_reduction=0.9, max_pruning_ratio=0.2, **head_options(model))
    assert_unchanged(model, state)


class _HeadsFirst(tp.importance.Importance):
    """Query heads score 0.01 * (head rank given by ``order``); all else scores 1."""

    def __init__(self, queries: dict[nn.Module, list[int]], head_dim: int) -> None:
        self.queries, self.head_dim = queries, head_dim

    def __call__(self, group: tp.Group) -> torch.Tensor:
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        if root not in self.queries:
            return torch.ones(n)
        ranks = torch.tensor(self.queries[root], dtype=torch.float)
        return (ranks.repeat_interleave(self.head_dim) * 0.01)[torch.tensor(group[0].idxs)]


def test_gqa_heads_go_as_predicted_and_pruned_equals_masked() -> None:
    model, x = hf_causal("llama", heads=8, kv_heads=2)()
    reference = copy.deepcopy(model)
    layers = model.model.layers
    # per layer, a score rank for each of the 8 query heads; key/value head c serves
    # query heads 4c .. 4c+3, and every key/value head must keep as many as the other
    ranks = [[3, 0, 6, 5, 1, 7, 2, 4], [7, 6, 5, 4, 3, 2, 1, 0]]
    importance = _HeadsFirst({a.self_attn.q_proj: r for a, r in zip(layers, ranks, strict=True)}, 8)
    options = head_options(model)
    pruner = CPMCPruner(model, x, importance, flops_reduction=0.12, **options)
    pruner.step()
    kept = [layer.self_attn.q_proj.out_features // 8 for layer in layers]
    assert kept[0] == kept[1] and kept[0] in (2, 4, 6)  # uniform layers, equal per kv head
    per_group = 4 - kept[0] // 2  # heads removed from each key/value group
    for layer, (pruned, rank) in enumerate(zip(layers, ranks, strict=True)):
        removed = []
        for c in range(2):  # the weakest heads of each key/value group go
            mine = sorted(range(4 * c, 4 * c + 4), key=lambda h: rank[h])
            removed += mine[:per_group]
        with torch.no_grad():  # masking those heads' columns of o_proj is the same function
            o = reference.model.layers[layer].self_attn.o_proj
            for h in removed:
                o.weight[:, 8 * h : 8 * h + 8] = 0
        assert pruned.self_attn.k_proj.out_features == 16  # both key/value heads stay
        assert pruned.self_attn.num_key_value_groups == kept[0] // 2
    assert model.model.embed_tokens.embedding_dim == 64  # only heads went at this budget
    assert all(layer.mlp.gate_proj.out_features == 128 for layer in layers)
    torch.testing.assert_close(logits(model(x)), logits(reference(x)), rtol=1e-5, atol=1e-5)


def test_attention_matmuls_are_counted() -> None:
    model, x = hf_causal("llama", heads=8, kv_heads=2)()
    counts = count_model(model, x)
    t, heads, head_dim, layers = x.shape[1], 8, 8, 2
    by_hand = layers * 2 * heads * t * t * head_dim  # QKᵀ and AV, per sample
    assert sum(counts.attention.values()) == by_hand
    host = tp.utils.count_ops_and_params(model, x)[0]
    assert counts.macs == host + by_hand


def test_the_budget_counts_attention_at_a_long_context() -> None:
    model, _ = hf_causal(
        "llama", heads=8, kv_heads=2, hidden_size=256, intermediate_size=512, head_dim=32
    )()
    x = torch.randint(0, 128, (1, 96))  # QKᵀ and AV are a large share here
    pruner = CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))
    pruner.step()
    counts = count_model(model, x)
    assert abs(1 - counts.macs / pruner.initial_counts.macs - 0.3) <= 0.005
    assert sum(counts.attention.values()) > 0


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_save_pretrained_round_trip(kind: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    model, x = hf_causal(kind, heads=8, kv_heads=2, tie_word_embeddings=True)()
    pruner = CPMCPruner(model, x, flops_reduction=0.4, **head_options(model))
    pruner.step()
    assert non_uniform_fields(model) == []
    assert model.config.hidden_size % model.config.num_attention_heads == 0
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again
    config = model.config
    assert config.hidden_size == model.model.embed_tokens.embedding_dim
    assert config.intermediate_size == model.model.layers[0].mlp.gate_proj.out_features
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    )
    loaded.eval()
    torch.testing.assert_close(logits(loaded(x)), logits(model(x)), rtol=0, atol=0)
    tokens = loaded.generate(x[:, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 7)


def test_head_options_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="head_options does not know Sequential"):
        head_options(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="must be an nn.Module"):
        head_options("vit")  # type: ignore[arg-type]


def test_head_pruning_ratio_zero_keeps_every_head() -> None:
    model, x = hf_causal("llama", heads=8, kv_heads=2)()
    CPMCPruner(model, x, flops_reduction=0.3, head_pruning_ratio=0, **head_options(model)).step()
    assert all(layer.self_attn.q_proj.out_features == 64 for layer in model.model.layers)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_heads": [1]}, TypeError, "num_heads must be a dict"),
        ({"num_heads": {"q": 2}}, TypeError, "num_heads keys must be nn.Module"),
        ({"num_heads": "q"}, TypeError, "num_heads must be a dict"),
        ({"prune_num_heads": True, "prune_head_dims": True}, ValueError, "not both"),
        ({"prune_num_heads": True, "num_heads": None}, ValueError, "needs num_heads"),
        ({"head_pruning_ratio": 1.5}, ValueError, "head_pruning_ratio"),
        ({"uniform_layers": nn.Linear(2, 2)}, TypeError, "uniform_layers must be a list"),
        ({"uniform_layers": [[1]]}, TypeError, "must hold nn.Module"),
        ({"head_pruning_ratio_dict": {}}, TypeError, "head_pruning_ratio_dict"),
    ],
)
def test_bad_head_options(options: dict, error: type, match: str) -> None:
    model, x = hf_causal("llama", heads=8, kv_heads=2)()
    base = head_options(model)
    if "num_heads" in options and options["num_heads"] == {"q": 2}:
        options = {"num_heads": {"q": 2}}
    merged = {**base, **options}
    if merged.get("num_heads") is None:
        merged.pop("num_heads")
    state = model_state(model)
    with pytest.raises(error, match=match):
        CPMCPruner(model, x, flops_reduction=0.3, **merged)
    assert_unchanged(model, state)


@pytest.mark.slow
def test_vit_b_16_budget_within_half_a_point() -> None:
    models = pytest.importorskip("torchvision.models")
    model, x = models.vit_b_16().eval(), torch.randn(1, 3, 224, 224)
    pruner = CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))
    pruner.step()
    assert abs(pruner.report().macs_reduction - 0.3) <= 0.005
    assert model.hidden_dim == model.conv_proj.out_channels
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ["torchvision-vit", "hf-llama-gqa"])
def test_the_nni_pruner_refuses_a_transformer(name: str) -> None:
    nni_pruner = pytest.importorskip("cpmc_plugin.nni").CPMCPruner
    model, x = ZOO[name]()
    state = model_state(model)
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.3}]
    with pytest.raises(ValueError, match="NNI pruner covers CNNs.*head_options"):
        nni_pruner(model, config, example_inputs=x)
    assert_unchanged(model, state)


def test_embedding_and_attention_weights_are_scored_by_hand() -> None:
    from cpmc_plugin.torch_pruning.graph.group_stats import group_stats

    torch.manual_seed(0)
    embed, attention = nn.Embedding(5, 4), nn.MultiheadAttention(4, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.attention, self.head = embed, attention, nn.Linear(4, 3)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.embed(tokens)
            return self.head(h + self.attention(h, h, h, need_weights=False)[0])

    net = Net().eval()
    graph = tp.DependencyGraph().build_dependency(net, torch.randint(0, 5, (1, 3)))
    group = graph.get_pruning_group(embed, tp.prune_embedding_out_channels, list(range(4)))
    stats = group_stats(group, None, p=1)
    w_in, b_in = attention.in_proj_weight.detach(), attention.in_proj_bias.detach()
    w_out, b_out = attention.out_proj.weight.detach(), attention.out_proj.bias.detach()
    rows = w_in.abs().reshape(3, 4, 4).sum((0, 2)) + w_out.abs().sum(1)
    rows += b_in.abs().reshape(3, 4).sum(0) + b_out.abs()
    outgoing = embed.weight.detach().abs().sum(0) + rows  # the table's column c is channel c
    incoming = w_in.abs().sum(0) + w_out.abs().sum(0) + net.head.weight.detach().abs().sum(0)
    assert stats.unsupported == ()
    torch.testing.assert_close(stats.out_value, outgoing.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.in_value, incoming.double(), rtol=1e-5, atol=1e-6)


def test_save_pruned_and_load_pruned_rebuild_a_gqa_model(tmp_path) -> None:
    from cpmc_plugin import load_pruned, save_pruned

    model, x = hf_causal("llama", heads=8, kv_heads=2)()
    pruner = CPMCPruner(model, x, flops_reduction=0.3, **head_options(model))
    pruner.step()
    save_pruned(model, tmp_path / "llama.pt", pruner.pruning_history())
    fresh, _ = hf_causal("llama", heads=8, kv_heads=2)()
    loaded = load_pruned(fresh, tmp_path / "llama.pt", x)
    assert loaded.model.layers[0].self_attn.num_key_value_groups == (
        model.model.layers[0].self_attn.num_key_value_groups
    )
    assert torch.equal(logits(loaded(x)), logits(model(x)))


@pytest.mark.parametrize("rate", [0.5, 0.7])
def test_timm_attention_is_modelled_as_the_host_counts_it(rate: float) -> None:
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=96, depth=2,
        num_heads=4, mlp_ratio=2.0,
    ).eval()  # fmt: skip
    x = torch.randn(1, 1, 28, 28)
    pruner = CPMCPruner(vit, x, flops_reduction=rate, **head_options(vit))
    plan = pruner.plan()
    pruner.step()
    assert plan.cost == pytest.approx(count_model(vit, x).macs, rel=1e-9)  # the first plan held
    assert abs(pruner.report().macs_reduction - rate) <= 0.005
